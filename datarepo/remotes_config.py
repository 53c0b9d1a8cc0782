"""Remotes as DVC names them: read and written in the work tree's ``.dvc/config`` (and
``.dvc/config.local`` for what should stay on this machine) through DVC's own config
class, so ``dvc remote …`` and ``datarepo remote …`` see the same remotes, with DVC's
credentials and options. DVC is imported here, inside functions, and only here."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from datarepo.errors import DataRepoError, InvalidInputError
from datarepo.fsutil import LocalFileSystem, NotAFileError, atomic_write
from datarepo.refs import MAX_PART_BYTES, REMOTES, is_valid_ref_format
from datarepo.repo import DOTDIR, Repo

DVC_DIR = ".dvc"
LOCAL = ("local", "file")  # the protocols of a remote on this machine's filesystem
DOWNLOAD_TRIES = 3  # a file downloaded whole is tried this many times, each from where the last broke


class RemoteError(DataRepoError):
    """A remote cannot be named, reached or used as asked (unknown name, bad URL, a
    missing DVC plugin, an endpoint that does not answer)."""


class RemoteInfo(NamedTuple):
    name: str
    url: str
    default: bool


class RemoteFS(NamedTuple):
    """A remote's fsspec filesystem and the path of the repository's layout on it."""

    name: str
    url: str
    fs: Any  # an fsspec AbstractFileSystem
    root: str
    protocol: str


def dvc_dir(repo: Repo) -> Path:
    """The ``.dvc`` folder of the DVC project the work tree is in, found as DVC finds it (the
    nearest folder up from the work tree that holds one, within its file system), so that
    ``dvc remote list`` there lists the same remotes; else the one to make beside the work
    tree. (One made in a folder of a DVC project would make that folder a project of its
    own, whose files the enclosing project's ``dvc status`` no longer sees.) A bare
    repository's is in its folder."""
    if repo.worktree is None:
        return repo.dotdir / DVC_DIR
    for folder in (repo.worktree, *repo.worktree.parents):
        if (folder / DVC_DIR).is_dir():
            return folder / DVC_DIR
        if os.path.ismount(folder):
            break
    return repo.worktree / DVC_DIR


def check_remote_name(name: str) -> str:
    """A remote's name becomes part of ref names (``refs/remotes/<name>/<branch>``): one
    valid ref component, nothing that could leave the repository, and short enough to be
    a file's name there."""
    if not is_valid_ref_format(name) or "/" in name or name.startswith("-") or name == "HEAD":
        raise InvalidInputError(f"invalid remote name: {name!r}")
    if len(name.encode()) > MAX_PART_BYTES:
        raise InvalidInputError(f"invalid remote name: {name[:40]!r}…: longer than {MAX_PART_BYTES} bytes")
    return name


def _config(repo: Repo, create: bool = False, validate: bool = True) -> Any:
    try:
        from dvc.config import Config
    except ImportError:
        raise RemoteError("remotes need DVC: pip install 'datarepo[remote]'") from None
    folder = dvc_dir(repo)
    if create and not folder.exists():
        _dvc_init(folder)
    for name in ("config", "config.local"):  # (DVC would wait for ever on a FIFO there)
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(os.stat(folder / name).st_mode):
                raise RemoteError(f"{DVC_DIR}/{name}: not a regular file")
    try:
        return Config(dvc_dir=str(folder), validate=validate)
    except (OSError, RuntimeError) as e:  # DVC's user and system config too: HOME unknown, XDG_CONFIG_HOME a file
        raise RemoteError(f"DVC's config files: {_one_line(e)}") from None
    except Exception as e:  # dvc.config.ConfigError and what its schema raises
        raise RemoteError(f"{folder.name}/config: {_one_line(e)}") from None


def _dvc_init(folder: Path) -> None:
    """Makes ``.dvc`` as ``dvc init`` would, so that DVC's own commands work in the folder:
    its ``.gitignore`` keeps credentials, DVC's cache and its temporary files out of git,
    and outside a git repository the config says so (``dvc init --no-scm``: else every
    ``dvc`` command there fails with "not a git repository")."""
    folder.mkdir()
    (folder / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    if not any((above / ".git").exists() for above in (folder.parent, *folder.parent.parents)):
        (folder / "config").write_text("[core]\n    no_scm = True\n")


@contextmanager
def _edit(repo: Repo, level: str, validate: bool = True) -> Iterator[dict[str, Any]]:
    """DVC's config file of ``level``, edited; as it was if the edit fails. (DVC truncates
    the file, then writes it: a value it cannot write, such as a name it cannot quote,
    left it empty, every remote gone.)"""
    config = _config(repo, create=True, validate=validate)
    path = Path(config.files[level])
    try:
        before: bytes | None = path.read_bytes()
    except FileNotFoundError:
        before = None
    try:
        with config.edit(level, validate=validate) as conf:
            yield conf
    except BaseException as e:
        if before is None:
            path.unlink(missing_ok=True)
        elif not path.is_file() or path.read_bytes() != before:
            atomic_write(path, before, mode=0o644)
        if isinstance(e, DataRepoError) or not isinstance(e, Exception):
            raise
        raise RemoteError(f"{DVC_DIR}/{path.name} not changed: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    text = _said(e) or type(e).__name__
    cause = e.__cause__ or e.__context__
    if cause is not None and (said := _said(cause)) and said not in text:
        text = said if text in said else f"{text}: {said}"  # (botocore's says the server's message again)
    return " ".join(text.split())


def _said(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:  # (without Python's "[Errno N]")
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e).strip()


@contextmanager
def speaking(remote: str, passing: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """A filesystem's own errors (OSError, botocore's, …) become one RemoteError line;
    datarepo's errors, Python's own (a bug) and those of ``passing`` pass as they are."""
    try:
        yield
    except (DataRepoError, *passing):
        raise
    except Exception as e:
        if isinstance(e, OSError) or type(e).__module__.split(".")[0] not in ("builtins", "datarepo"):
            raise RemoteError(f"remote {remote!r}: {_one_line(e)}") from None
        raise


def _check_value(option: str, value: str) -> str:
    """A URL or option value: one line (a line break would be written into the config file
    as a multi-line value, and listed as several remotes); a URL is not empty (DVC takes
    that as the path ``..``)."""
    if any(c < " " or c == "\x7f" for c in value) or (option == "url" and not value):
        raise InvalidInputError(f"invalid remote {'URL' if option == 'url' else option}: {value[:200]!r}")
    return value


def add_remote(repo: Repo, name: str, url: str, default: bool = False, force: bool = False) -> None:
    check_remote_name(name)
    _check_value("url", url)
    with _edit(repo, "repo") as conf:
        if name in conf["remote"] and not force:
            raise RemoteError(f"remote {name!r} already exists")
        conf["remote"][name] = {"url": url}
        if default:
            conf["core"]["remote"] = name


def list_remotes(repo: Repo) -> list[RemoteInfo]:
    config = _config(repo)
    default = config["core"].get("remote")
    return [RemoteInfo(n, str(c.get("url", "")), n == default) for n, c in sorted(config["remote"].items())]


def remove_remote(repo: Repo, name: str) -> None:
    """Removes remote ``name`` (and its being the default) from both config files, and its
    remote-tracking refs, as git does: nothing else could delete them, and ``gc`` would
    keep what they reach for ever."""
    if name not in _config(repo, validate=False)["remote"]:
        raise RemoteError(f"no such remote: {name!r}")
    # Not validated: a remote whose url is gone but whose options are left in config.local
    # makes the whole config invalid, and removing it is how that is mended.
    for level in ("local", "repo"):
        with _edit(repo, level, validate=False) as conf:
            conf["remote"].pop(name, None)
            if conf["core"].get("remote") == name:
                del conf["core"]["remote"]
    with contextlib.suppress(InvalidInputError):  # (a name DVC took that is no ref component has no refs)
        tracking = f"{REMOTES}{check_remote_name(name)}/"
        with repo.lock:
            for ref in list(repo.refs.names(tracking)):
                repo.refs.update(ref, None, message=f"remote remove {name}")


def modify_remote(repo: Repo, name: str, option: str, value: str | None, local: bool = False) -> None:
    """Sets (or, with ``value=None``, unsets) one of DVC's options of a remote; DVC's schema
    checks the option and its value when the config is written."""
    if option == "url" and value is None:
        raise InvalidInputError("a remote's url cannot be unset (remove the remote)")
    if value is not None:
        _check_value(option, value)
    if name not in _config(repo)["remote"]:
        raise RemoteError(f"no such remote: {name!r}")
    with _edit(repo, "local" if local else "repo") as conf:
        section = conf["remote"].setdefault(name, {})
        if value is None:
            if option not in section:
                raise RemoteError(f"remote {name!r} has no option {option!r} set {'locally' if local else ''}".rstrip())
            del section[option]
        else:
            section[option] = value


def default_remote(repo: Repo) -> str:
    config = _config(repo)
    name = config["core"].get("remote")
    if name:
        return str(name)
    if len(config["remote"]) == 1:
        return str(next(iter(config["remote"])))
    raise RemoteError("no default remote: name one with -r, or set one with remote add -d")


def open_remote(repo: Repo, name: str | None) -> RemoteFS:
    """The filesystem of remote ``name`` (the default one if None), through DVC's
    filesystem layer: any remote DVC supports, with its credentials and options."""
    name = check_remote_name(name) if name is not None else default_remote(repo)
    config = _config(repo)
    if name not in config["remote"]:
        raise RemoteError(f"no such remote: {name!r}")
    url = str(config["remote"][name].get("url", ""))
    try:
        from dvc.fs import get_cloud_fs

        cls, conf, fs_path = get_cloud_fs(config, name=name)
        fs = cls(**conf)
        inner = None if _protocol(fs) in LOCAL else _one_retry_layer(fs.fs)
    except ImportError as e:
        raise RemoteError(f"remote {name!r} ({url}): {_one_line(e)}") from None
    except Exception as e:  # a missing plugin, a URL DVC does not take
        raise RemoteError(f"remote {name!r} ({url}): {_one_line(e)}") from None
    protocol = _protocol(fs)
    if protocol in LOCAL:
        return RemoteFS(name, url, local_filesystem(), _local_root(str(fs_path)), protocol)
    return RemoteFS(name, url, inner, str(fs_path).rstrip("/") or "/", protocol)


def url_filesystem(url: str) -> tuple[Callable[[], Any], str, str]:
    """The filesystem of a remote named by its URL alone (``s3://bucket/path``,
    ``file:///path``), not yet connected (a function that makes it: DVC's fsspec
    filesystem is made when first used), the path of the repository's layout on it,
    and its protocol. Credentials and endpoints come from where DVC's libraries read
    them (for S3, ``AWS_ENDPOINT_URL`` and the rest)."""
    try:
        from dvc.fs import get_cloud_fs

        cls, conf, fs_path = get_cloud_fs({}, url=_local_root(url) if url.startswith("file://") else url)
        fs = cls(**conf)
    except Exception as e:  # DVC missing, a missing plugin, a URL DVC does not take
        raise RemoteError(f"{url}: {_one_line(e)}") from None
    protocol = _protocol(fs)
    if protocol in LOCAL:
        return local_filesystem, _local_root(str(fs_path)), protocol
    return lambda: _one_retry_layer(fs.fs), str(fs_path).rstrip("/") or "/", protocol


def _one_retry_layer(fs: Any) -> Any:
    """The filesystem, with its requests retried by one layer only. s3fs retries each
    request 5 times around botocore's retries (5 attempts by default), and 5 times again
    around that where it reads a body: 125 attempts (250 requests, with aiohttp's own retry of
    a dropped connection) of a request that keeps failing, and a server that stops answering
    held a command for half an hour each request (15 s of read timeout each). botocore's
    retry is the one kept: it covers error answers (500, 503 SlowDown, throttling),
    connections reset or refused and timeouts, with a backoff, and is set where AWS's
    tools set it (``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``, ``max_attempts`` in
    ``~/.aws/config``); a body broken mid-way is :func:`download`'s."""
    if type(fs).__module__.split(".")[0] == "s3fs":
        fs.retries = 1
    return fs


def download(fs: Any, path: str, out: BinaryIO, **options: Any) -> None:
    """Copies the remote file ``path`` into ``out`` (empty, at its start). A transfer that
    fails (a body cut short or reset mid-way, a read that timed out: each request was already
    retried by the filesystem's library) is tried again from where it broke,
    :data:`DOWNLOAD_TRIES` times in all; an answer that says the file is not there or not
    ours to read (or a FIFO in a file's place) is final at once, and so is a disk here
    that is full."""
    for tries_left in range(DOWNLOAD_TRIES - 1, -1, -1):
        try:
            with fs.open(path, "rb", **options) as src:  # (options: the fsspec file's, block_size)
                if out.tell():
                    src.seek(out.tell())
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            return
        except (DataRepoError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, NotAFileError):
            raise
        except Exception as e:
            if not tries_left or isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise  # (the last try, or a disk here that cannot take it)


def local_filesystem() -> LocalFileSystem:
    """A remote on this machine's filesystem is read and written as the repository's own
    folder is: a FIFO, device or socket where a file should be is an error at once, never
    a read that waits forever; every write is atomic (files 0644, as DVC writes them)."""
    return LocalFileSystem(perm=0o644)


def _local_root(path: str) -> str:
    """A local remote's folder: DVC keeps a ``file://`` URL's scheme in the path it gives,
    which as a path would name a folder ``file:`` in the current one. A folder that is a
    work tree stands for the repository in its ``.datarepo``."""
    if path.startswith("file://"):
        path = path[len("file://") :]
    root = path.rstrip("/") or "/"
    inner = os.path.join(root, DOTDIR)
    if not os.path.lexists(os.path.join(root, "HEAD")) and os.path.isfile(os.path.join(inner, "config.toml")):
        return inner  # a work tree, named as ``git clone ../other`` names one: its repository is its .datarepo
    return root


def _protocol(fs: Any) -> str:
    return str(fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0])
