"""Drops the images that do not decode, recording why; the others pass unchanged.

``train/<class>/<n>.{jpg,cls,...}`` → ``clean/<class>/<n>``. ``datarepo lineage
train/cat/0001 --downstream`` shows a dropped image with its reason.
"""

from datarepo import pipeline


@pipeline(input="train/**", output="clean/", version="1")
def clean_images(datum):
    from io import BytesIO

    from PIL import Image

    if "jpg" not in datum:
        return pipeline.Drop("no jpg member")
    try:
        with Image.open(BytesIO(datum["jpg"])) as img:
            img.verify()  # reads the whole file, checks its structure
    except Exception as e:  # Pillow raises several kinds for a broken file
        return pipeline.Drop(f"corrupt image ({type(e).__name__})")
    return {ext: data for ext, data in datum.items() if ext != "__key__"}
