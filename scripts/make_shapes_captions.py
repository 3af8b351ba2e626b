#!/usr/bin/env python
"""Make the bundled image-caption set: procedurally drawn scenes whose captions say what is drawn.

Each 96 x 96 image holds one to three filled shapes (circle, square, triangle) in one of five
colours, each in one cell of a 3 x 3 grid; its caption names every shape, colour and position,
and counts shapes that look alike ("two red circles, at the top left and at the right."). A model
can only predict a caption's words from the image, so held-out caption loss with the image falls
well below the loss with a blank image once the vision tower has learned something.

Written in COCO's captions format, as a user's own data would be (``images`` + ``annotations``,
one JSON file per split, images in one folder):

    python scripts/make_shapes_captions.py      # -> src/layer_sensitivity/assets/shapes-captions

Deterministic: a seeded ``random.Random`` and PIL's PNG writer (no timestamps) give byte-identical
files on every run.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "layer_sensitivity" / "assets" / "shapes-captions"

SIZE = 96  # pixels; with Qwen3-VL's 16-pixel patches merged 2 x 2 this is a 3 x 3 grid of tokens
CELL = SIZE // 3
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 200, 30), "purple": (140, 60, 180)}
POSITIONS = {  # (column, row) of the 3 x 3 grid -> how a caption says it
    (0, 0): "the top left", (1, 0): "the top", (2, 0): "the top right",
    (0, 1): "the left", (1, 1): "the centre", (2, 1): "the right",
    (0, 2): "the bottom left", (1, 2): "the bottom", (2, 2): "the bottom right",
}
NUMBERS = {2: "two", 3: "three"}
BACKGROUND = (255, 255, 255)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--val-every", type=int, default=10, help="every Nth image goes to val")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def scene(rng: random.Random) -> list[tuple[str, str, tuple[int, int]]]:
    """One to three (shape, colour, cell) objects in distinct cells; repeats are likely so that
    counting matters."""
    count = rng.choice((1, 1, 2, 2, 3))
    cells = rng.sample(sorted(POSITIONS), count)
    first = (rng.choice(SHAPES), rng.choice(sorted(COLOURS)))
    objects = []
    for cell in cells:
        kind = first if rng.random() < 0.5 else (rng.choice(SHAPES), rng.choice(sorted(COLOURS)))
        objects.append((kind[0], kind[1], cell))
    return objects


def draw(objects: list[tuple[str, str, tuple[int, int]]], rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for shape, colour, (col, row) in objects:
        half = rng.randint(8, 13)  # a little size jitter, so shapes are not pixel templates
        cx = col * CELL + CELL // 2 + rng.randint(-2, 2)
        cy = row * CELL + CELL // 2 + rng.randint(-2, 2)
        box = (cx - half, cy - half, cx + half, cy + half)
        fill = COLOURS[colour]
        if shape == "circle":
            pen.ellipse(box, fill=fill)
        elif shape == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return image


def caption(objects: list[tuple[str, str, tuple[int, int]]]) -> str:
    """Objects grouped by look, in reading order of their first cell; alike ones are counted."""
    ordered = sorted(objects, key=lambda o: (o[2][1], o[2][0]))
    kinds = Counter((shape, colour) for shape, colour, _ in ordered)
    parts, seen = [], set()
    for shape, colour, _ in ordered:
        if (shape, colour) in seen:
            continue
        seen.add((shape, colour))
        where = [POSITIONS[c] for s, k, c in ordered if (s, k) == (shape, colour)]
        n = kinds[(shape, colour)]
        if n == 1:
            parts.append(f"a {colour} {shape} at {where[0]}")
        else:
            parts.append(f"{NUMBERS[n]} {colour} {shape}s, at {' and at '.join(where)}")
    return "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    images_dir = args.out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, dict[str, list]] = {s: {"images": [], "annotations": []}
                                          for s in ("train", "val")}
    for i in range(args.images):
        objects = scene(rng)
        name = f"{i:04d}.png"
        draw(objects, rng).save(images_dir / name, optimize=True)
        split = "val" if i % args.val_every == args.val_every - 1 else "train"
        splits[split]["images"].append(
            {"id": i, "file_name": name, "width": SIZE, "height": SIZE})
        splits[split]["annotations"].append(
            {"id": i, "image_id": i, "caption": caption(objects)})
    info = {"description": "Procedurally drawn shapes with captions that say what is drawn "
                           "(scripts/make_shapes_captions.py)", "version": "1",
            "seed": args.seed}
    for split, doc in splits.items():
        path = args.out / f"captions_{split}.json"
        path.write_text(json.dumps({"info": info, **doc}, indent=1) + "\n")
        print(f"{path}: {len(doc['images'])} images")


if __name__ == "__main__":
    main()
