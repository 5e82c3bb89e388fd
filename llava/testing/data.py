"""The tiny dataset: LLaVA's JSON conversations over synthetic images of coloured shapes."""

from __future__ import annotations

import random
from pathlib import Path

from llava.testing.files import write_json

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
SHAPES = ("square", "circle", "triangle", "stripe")


def draw_image(rng: random.Random, color: str, shape: str, size: tuple[int, int], mode: str):
    """One synthetic image: a coloured shape on a grey background, in the requested PIL mode."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(image)
    fill = COLORS[color]
    margin_x, margin_y = width // 6, height // 6
    box = (margin_x, margin_y, width - margin_x, height - margin_y)
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "triangle":
        draw.polygon(
            [(width // 2, margin_y), (margin_x, height - margin_y), (width - margin_x, height - margin_y)], fill=fill
        )
    else:
        for x in range(0, width, 8):
            draw.rectangle((x, 0, x + 3, height), fill=fill)
    # A little deterministic noise so that images are not trivially identical.
    for _ in range(8):
        x, y = rng.randrange(width), rng.randrange(height)
        image.putpixel((x, y), tuple(rng.randrange(256) for _ in range(3)))
    if mode == "RGB":
        return image
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.new("L", size, 200))
        return image
    if mode == "L":
        return image.convert("L")
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    raise ValueError(f"unsupported image mode {mode!r}")


def _image_conversation(rng: random.Random, color: str, shape: str, rounds: int) -> list[dict]:
    qa = [
        ("What color is the shape in the image?", f"The {shape} is {color}."),
        ("What shape is shown?", f"It is a {shape}."),
        ("Describe the image briefly.", f"A {color} {shape} on a gray background."),
        ("Is the background dark or light?", "The background is gray, neither dark nor light."),
        ("How many shapes are there?", "There is one shape."),
    ]
    rng.shuffle(qa)
    turns = []
    for index, (question, answer) in enumerate(qa[:rounds]):
        if index == 0:
            # Upstream data puts <image> before or after the first question; preprocessing moves it to the front.
            question = f"<image>\n{question}" if rng.random() < 0.7 else f"{question}\n<image>"
        turns.append({"from": "human", "value": question})
        turns.append({"from": "gpt", "value": answer})
    return turns


def _text_conversation(rng: random.Random, rounds: int) -> list[dict]:
    turns = []
    for _ in range(rounds):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        turns.append({"from": "human", "value": f"What is {a} plus {b}?"})
        turns.append({"from": "gpt", "value": f"{a} plus {b} is {a + b}."})
    return turns


def build_dataset(out_dir: str | Path, num_samples: int = 48, seed: int = 0) -> tuple[Path, Path]:
    """A small dataset in LLaVA's JSON format with images of varied sizes and modes.

    Returns ``(json_path, image_folder)``. Every 6th sample is text-only; images are stored under nested folders
    (like ``coco/train2017/...``) as PNG and JPEG, in modes RGB, L, RGBA and P, in sizes wide, tall and square.
    """
    out_dir = Path(out_dir)
    image_folder = out_dir / "images"
    rng = random.Random(seed)
    sizes = [(32, 32), (48, 32), (32, 48), (64, 40), (40, 64), (96, 32)]
    modes = ["RGB", "L", "RGBA", "P"]
    samples = []
    for index in range(num_samples):
        rounds = 1 + index % 3
        sample_id = f"tiny-{index:05d}"
        if index % 6 == 5:
            samples.append({"id": sample_id, "conversations": _text_conversation(rng, rounds)})
            continue
        color = rng.choice(sorted(COLORS))
        shape = rng.choice(SHAPES)
        mode = modes[index % len(modes)]
        size = sizes[index % len(sizes)]
        # JPEG cannot hold RGBA or P; those stay PNG.
        extension = "jpg" if mode in ("RGB", "L") and index % 2 == 0 else "png"
        relative = f"{'coco/train2017' if index % 2 else 'synthetic'}/{sample_id}.{extension}"
        path = image_folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_image(rng, color, shape, size, mode).save(path)
        samples.append(
            {"id": sample_id, "image": relative, "conversations": _image_conversation(rng, color, shape, rounds)}
        )
    json_path = out_dir / "llava_tiny.json"
    write_json(json_path, samples)
    return json_path, image_folder
