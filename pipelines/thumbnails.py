"""Thumbnails of the clean images: ``clean/<class>/<n>`` → ``thumbs/<class>/<n>.{jpg,cls}``."""

from datarepo import pipeline


@pipeline(input="clean/**", output="thumbs/", version="1", params={"size": 16})
def thumbnails(datum, size):
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(datum["jpg"])) as img:
        small = img.convert("RGB").resize((size, size))
    out = BytesIO()
    small.save(out, format="JPEG", quality=90)
    return {"jpg": out.getvalue(), "cls": datum.get("cls", b"")}
