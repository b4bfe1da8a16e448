"""The `mini` profile's drawn ball-sports set: each image one sport (court and ball), one to three
players in one shirt colour, and five captions stating exactly those facts."""

import argparse
import contextlib
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw

from vicap_utils.config import DataConfig
from vicap_utils.ops.env import cache_dir
from vicap_utils.ops.folders import output_folder, staged, visible_entries
from vicap_utils.ops.io import VicapError, atomic_dir, atomic_write_json, read_json
from vicap_utils.ops.progress import progress
from vicap_utils.text import normalize_caption

RGB = tuple[int, int, int]
Point = tuple[float, float]

SPORTS = ("football", "tennis", "basketball", "volleyball")
COURTS = {"football": ("grass",), "tennis": ("hard", "clay"), "basketball": ("wood",),
          "volleyball": ("sand",)}
SHIRTS: dict[str, RGB] = {"red": (215, 30, 35), "yellow": (250, 215, 10),
                          "white": (245, 245, 245), "black": (25, 25, 28)}
LANGS = ("vi", "en")
SYNTH_OUTPUTS = ("captions.json", "images", "captions.txt")  # the last with defects only
SIZE = (160, 120)  # the drawn set's images: width, height
SUPERSAMPLE = 2  # draw at twice the size, then downscale: smooth edges without blurring

GROUND: dict[str, RGB] = {"grass": (62, 150, 62), "hard": (45, 95, 170), "clay": (196, 104, 62),
                          "wood": (205, 148, 92), "sand": (232, 212, 162)}
BACKDROP: dict[str, RGB] = {"grass": (35, 95, 45), "hard": (40, 105, 75), "clay": (40, 100, 70),
                            "wood": (110, 125, 150), "sand": (150, 200, 240)}
SKINS: tuple[RGB, ...] = ((232, 190, 150), (198, 148, 105), (150, 102, 70))
WHITE, DARK = (245, 245, 245), (40, 40, 40)
# (radius as a share of the height, fill, outline)
BALLS: dict[str, tuple[float, RGB, RGB | None]] = {
    "football": (0.045, (250, 250, 250), (30, 30, 30)), "tennis": (0.025, (210, 240, 40), None),
    "basketball": (0.05, (235, 115, 25), (60, 30, 10)),
    "volleyball": (0.05, (250, 250, 245), (40, 60, 140))}

VI: dict[str, Any] = {
    "numbers": {1: "một", 2: "hai", 3: "ba"},
    "colours": {"red": "đỏ", "yellow": "vàng", "white": "trắng", "black": "đen"},
    "colour_phrases": ("mặc áo {c}", "áo {c}", "mặc áo màu {c}"),
    "nouns": {**dict.fromkeys(SPORTS, ("cầu thủ", "vận động viên", "người chơi")),
              "tennis": ("tay vợt", "vận động viên", "người chơi")},
    "verbs": {"football": ("chơi bóng đá", "đá bóng", "thi đấu bóng đá"),
              "tennis": ("chơi quần vợt", "thi đấu quần vợt"),
              "basketball": ("chơi bóng rổ", "ném bóng rổ", "thi đấu bóng rổ"),
              "volleyball": ("chơi bóng chuyền", "đánh bóng chuyền", "thi đấu bóng chuyền")},
    "places": {"grass": ("trên sân cỏ", "trên sân bóng", "trên sân bóng đá"),
               "hard": ("trên sân quần vợt", "trên sân cứng"),
               "clay": ("trên sân quần vợt", "trên sân đất nện"),
               "wood": ("trên sân bóng rổ", "trong nhà thi đấu"),
               "sand": ("trên bãi biển", "trên bãi cát")},
    "templates": ("{n} {s} {c} đang {v} {p}.", "{p}, {n} {s} {c} đang {v}.",
                  "có {n} {s} {c} đang {v} {p}.", "hình ảnh {n} {s} {c} đang {v} {p}.",
                  "{n} {s} {c} đang {v}.", "{n} {s} {c} {v} {p}.", "{p} có {n} {s} {c} đang {v}."),
    "together": "{n} {s} {c} đang cùng nhau {v} {p}.",  # for two players or more
}

EN: dict[str, Any] = {
    "numbers": {1: "one", 2: "two", 3: "three"},
    "colour_phrases": {1: ("in a {c} shirt", "wearing a {c} shirt", "in {c}"),
                       2: ("in {c} shirts", "wearing {c} shirts", "in {c}")},
    "nouns": {"football": ("player", "athlete", "footballer"),
              "tennis": ("tennis player", "athlete", "player"),
              "basketball": ("player", "athlete", "basketball player"),
              "volleyball": ("player", "athlete", "volleyball player")},
    # (-ing form, base form): "playing <sport>" or the sport's action with its ball
    "verbs": {sport: ((f"playing {sport}", f"play {sport}"), (f"{ing} {ball}", f"{base} {ball}"))
              for sport, (ing, base, ball) in {
                  "football": ("kicking", "kick", "a football"),
                  "tennis": ("hitting", "hit", "a tennis ball"),
                  "basketball": ("shooting", "shoot", "a basketball"),
                  "volleyball": ("hitting", "hit", "a volleyball")}.items()},
    "places": {"grass": ("on a grass field", "on a football pitch"),
               "hard": ("on a tennis court", "on a blue hard court"),
               "clay": ("on a tennis court", "on a clay court"),
               "wood": ("on a basketball court", "in an indoor arena"),
               "sand": ("on the beach", "on the sand")},
    "templates": ("{n} {s} {c} {be} {ing} {p}.", "{p}, {n} {s} {c} {be} {ing}.",
                  "there {be} {n} {s} {c} {ing} {p}.", "a picture of {n} {s} {c} {ing} {p}.",
                  "{n} {s} {c} {be} {ing}.", "{n} {s} {c} {base} {p}.",
                  "{p}, there {be} {n} {s} {c} {ing}."),
    "together": "{n} {s} {c} {be} {ing} together {p}.",
}


def random_scene(rng: random.Random) -> dict[str, Any]:
    """Pick what an image shows: sport, court surface, player count and shirt colour."""
    sport = rng.choice(SPORTS)
    return {"sport": sport, "court": rng.choice(COURTS[sport]),
            "n_players": rng.randint(1, 3), "shirt": rng.choice(sorted(SHIRTS))}


def _fill_vi(template: str, scene: dict[str, Any], rng: random.Random) -> str:
    """One Vietnamese caption: a template with a random noun, colour, verb and place phrase."""
    return template.format(
        n=VI["numbers"][scene["n_players"]], s=rng.choice(VI["nouns"][scene["sport"]]),
        c=rng.choice(VI["colour_phrases"]).format(c=VI["colours"][scene["shirt"]]),
        v=rng.choice(VI["verbs"][scene["sport"]]), p=rng.choice(VI["places"][scene["court"]]))


def _fill_en(template: str, scene: dict[str, Any], rng: random.Random) -> str:
    """One English caption, with number agreement on the noun, the verb and the shirts."""
    plural = scene["n_players"] > 1
    noun = rng.choice(EN["nouns"][scene["sport"]]) + ("s" if plural else "")
    ing, base = rng.choice(EN["verbs"][scene["sport"]])
    if not plural:
        base = base.replace(" ", "s ", 1)  # the verb agrees: "kicks a football"
    colour = rng.choice(EN["colour_phrases"][2 if plural else 1])
    return template.format(
        n=EN["numbers"][scene["n_players"]], s=noun, c=colour.format(c=scene["shirt"]),
        be="are" if plural else "is", ing=ing, base=base,
        p=rng.choice(EN["places"][scene["court"]]))


def captions_for(scene: dict[str, Any], lang: str, rng: random.Random, k: int = 5) -> list[str]:
    """`k` different captions of the scene, each from its own template while some are left."""
    if lang not in LANGS:
        raise ValueError(f"unknown caption language {lang!r} (choose from {', '.join(LANGS)})")
    table, fill = (VI, _fill_vi) if lang == "vi" else (EN, _fill_en)
    templates = list(table["templates"]) + ([table["together"]] if scene["n_players"] > 1 else [])
    rng.shuffle(templates)
    captions: list[str] = []
    for attempt in range(50 * k):
        text = fill(templates[attempt % len(templates)], scene, rng)
        caption = normalize_caption(text[:1].upper() + text[1:])  # the form the audit keeps
        if caption not in captions:
            captions.append(caption)
        if len(captions) == k:
            return captions
    raise ValueError(f"cannot make {k} different captions for {scene}")


def _clip(values: Any) -> RGB:
    """Three numbers rounded and clamped to a valid RGB colour."""
    r, g, b = (min(255, max(0, round(v))) for v in values)
    return r, g, b


def _jitter(colour: RGB, rng: random.Random, amount: int = 10) -> RGB:
    """Shift each channel a little so that no two images share exactly the same colours."""
    return _clip(c + rng.randint(-amount, amount) for c in colour)


def _shade(colour: RGB, factor: float) -> RGB:
    """A darker (factor < 1) or lighter version of a colour."""
    return _clip(c * factor for c in colour)


def _draw_ground(draw: ImageDraw.ImageDraw, court: str, w: int, h: int, top: int,
                 rng: random.Random) -> None:
    """Backdrop above `top`, surface below it; grass gets mowing stripes, wood planks."""
    ground = _jitter(GROUND[court], rng)
    draw.rectangle((0, 0, w, top), fill=_jitter(BACKDROP[court], rng))
    draw.rectangle((0, top, w, h), fill=ground)
    if court == "grass":
        band = w // 8
        for x in range(-band + rng.randrange(band), w, 2 * band):
            draw.rectangle((x, top, x + band, h), fill=_shade(ground, 1.1))
    elif court == "wood":
        for y in range(top + rng.randrange(h // 20), h, max(2, h // 20)):
            draw.line((0, y, w, y), fill=_shade(ground, 0.88), width=max(1, h // 150))
    elif court == "sand":
        draw.rectangle((0, top - h // 12, w, top), fill=_jitter((45, 115, 175), rng))


def _draw_court_lines(draw: ImageDraw.ImageDraw, w: int, h: int, top: int,
                      rng: random.Random) -> None:
    """White court markings in a simple perspective: a trapezoid outline and a middle line."""
    lw = max(2, h // 60)
    inset = rng.uniform(0.08, 0.2) * w
    y0 = top + rng.uniform(0.04, 0.1) * h
    y1 = h - rng.uniform(0.02, 0.06) * h
    outline = [(inset, y0), (w - inset, y0), (w + inset / 2, y1), (-inset / 2, y1)]
    draw.line(outline + [outline[0]], fill=WHITE, width=lw)
    mid = rng.uniform(0.35, 0.65) * w
    draw.line((mid, y0, mid + (mid - w / 2) * 0.4, y1), fill=WHITE, width=lw)
    ymid = (y0 + y1) / 2
    draw.line((inset * 0.7, ymid, w - inset * 0.7, ymid), fill=WHITE, width=lw)


def _draw_net(draw: ImageDraw.ImageDraw, x0: float, y0: float, x1: float, y1: float) -> None:
    """A net: a mesh of thin dark lines and a white tape along its top."""
    step = max(3.0, (y1 - y0) / 4)
    lw = max(1, round(step / 5))
    x = x0
    while x <= x1:
        draw.line((x, y0, x, y1), fill=DARK, width=lw)
        x += step
    y = y0
    while y <= y1:
        draw.line((x0, y, x1, y), fill=DARK, width=lw)
        y += step
    draw.rectangle((x0, y0 - 2 * lw, x1, y0 + lw), fill=(250, 250, 250))


def _draw_hoop(draw: ImageDraw.ImageDraw, w: int, h: int, top: int, rng: random.Random) -> None:
    """A basketball stand on the left or right: pole, white backboard, orange ring and net."""
    left = rng.random() < 0.5
    pole_x = rng.uniform(0.03, 0.08) * w
    pole_x = pole_x if left else w - pole_x
    lw = max(3, h // 30)
    board_y = rng.uniform(0.05, 0.12) * h
    board_w, board_h = 0.14 * w, 0.15 * h
    board_x = pole_x + (0.03 * w if left else -0.03 * w - board_w)
    draw.line((pole_x, board_y + board_h / 2, pole_x, top + 0.15 * h), fill=(70, 70, 75), width=lw)
    draw.rectangle((board_x, board_y, board_x + board_w, board_y + board_h), fill=(250, 250, 250),
                   outline=(60, 60, 60), width=max(1, lw // 3))
    ring_cx, ring_y = board_x + board_w / 2, board_y + board_h * 0.85
    rx, ry = board_w * 0.3, board_h * 0.15
    for i in range(4):
        x = ring_cx - rx + i * 2 * rx / 3
        draw.line((x, ring_y, ring_cx + (x - ring_cx) * 0.6, ring_y + board_h * 0.5),
                  fill=(240, 240, 240), width=max(1, lw // 3))
    draw.ellipse((ring_cx - rx, ring_y - ry, ring_cx + rx, ring_y + ry), outline=(235, 100, 20),
                 width=max(2, lw // 2))


def _draw_setting(draw: ImageDraw.ImageDraw, scene: dict[str, Any], w: int, h: int,
                  rng: random.Random) -> int:
    """Everything behind the players; returns the horizon y so players stand below it."""
    court, sport = scene["court"], scene["sport"]
    low, high = (0.38, 0.46) if court == "sand" else (0.22, 0.32)
    top = round(h * rng.uniform(low, high))  # where the backdrop meets the playing surface
    _draw_ground(draw, court, w, h, top, rng)
    if court != "sand":
        _draw_court_lines(draw, w, h, top, rng)
    if sport == "football":  # the centre circle, seen flattened
        cx, cy, rx, ry = rng.uniform(0.35, 0.65) * w, (top + h) / 2, 0.16 * w, 0.09 * h
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), outline=WHITE, width=max(2, h // 60))
    elif sport == "tennis":
        net_y = top + rng.uniform(0.12, 0.2) * h
        _draw_net(draw, 0.04 * w, net_y, 0.96 * w, net_y + 0.1 * h)
    elif sport == "basketball":
        _draw_hoop(draw, w, h, top, rng)
    else:
        net_y = rng.uniform(0.12, 0.2) * h
        for x in (0.06 * w, 0.94 * w):
            draw.line((x, net_y - 0.02 * h, x, top + 0.1 * h), fill=(60, 60, 60),
                      width=max(3, h // 40))
        _draw_net(draw, 0.06 * w, net_y, 0.94 * w, net_y + 0.12 * h)
    return top


def _limb(start: Point, angle: float, length: float) -> Point:
    """The end of a limb hanging from `start`, `angle` degrees away from straight down."""
    rad = math.radians(angle)
    return start[0] + length * math.sin(rad), start[1] + length * math.cos(rad)


def _draw_player(draw: ImageDraw.ImageDraw, foot: Point, height: float, shirt: RGB,
                 sport: str, rng: random.Random) -> Point:
    """A front-facing stick-and-block figure (a racket for tennis); returns its right hand."""
    cx, fy = foot
    skin = rng.choice(SKINS)
    limb_w = max(2, round(height * 0.08))
    head_r, half = height * 0.1, height * 0.13
    neck_y, hip_y = fy - height + 2 * head_r, fy - height * 0.45
    shorts = _shade(shirt, 0.8) if shirt != SHIRTS["black"] else (50, 50, 55)
    spread = rng.uniform(5, 40 if sport == "football" else 25)
    for side, angle in ((-1, spread), (1, rng.uniform(5, 25))):
        kx, ky = _limb((cx + side * half * 0.5, hip_y), side * angle, height * 0.45)
        draw.line((cx + side * half * 0.5, hip_y, kx, ky), fill=skin, width=limb_w)
        draw.ellipse((kx - limb_w, ky - limb_w / 2, kx + limb_w, ky + limb_w / 2),
                     fill=(30, 30, 30))
    hands = []
    for side in (-1, 1):
        shoulder = (cx + side * half, neck_y + height * 0.04)
        hands.append(_limb(shoulder, side * rng.uniform(20, 160), height * 0.36))
        draw.line((*shoulder, *hands[-1]), fill=skin, width=limb_w)
    draw.rectangle((cx - half, hip_y - height * 0.02, cx + half, hip_y + height * 0.12),
                   fill=shorts)
    draw.rounded_rectangle((cx - half, neck_y, cx + half, hip_y), radius=half * 0.4, fill=shirt,
                           outline=_shade(shirt, 0.6), width=max(1, limb_w // 3))
    head = (cx - head_r, neck_y - 2 * head_r, cx + head_r, neck_y)
    draw.ellipse(head, fill=skin)
    draw.chord(head, 180, 360, fill=(35, 25, 20))
    if sport == "tennis":  # a racket held upright: a short handle and an oval frame
        (hx, hy), r, width = hands[1], height * 0.09, max(1, round(height * 0.03))
        draw.line((hx, hy, hx, hy - r), fill=DARK, width=width)
        draw.ellipse((hx - r * 0.75, hy - 3 * r, hx + r * 0.75, hy - r), outline=DARK, width=width)
    return hands[1]


def _draw_ball(draw: ImageDraw.ImageDraw, sport: str, x: float, y: float, h: int) -> None:
    """The sport's ball: spotted, small yellow-green, orange with seams, or white-and-yellow."""
    radius, fill, outline = BALLS[sport]
    r = h * radius
    box = (x - r, y - r, x + r, y + r)
    lw = max(1, round(r / 5))
    draw.ellipse(box, fill=fill, outline=outline, width=lw)
    if sport == "football":
        s = r * 0.35
        for dx, dy in ((0, 0), (-0.55, -0.5), (0.55, -0.5), (-0.55, 0.6), (0.55, 0.6)):
            px, py = x + dx * r, y + dy * r
            draw.ellipse((px - s, py - s, px + s, py + s), fill=(20, 20, 20))
    elif sport == "basketball":
        for seam in ((x - r, y, x + r, y), (x, y - r, x, y + r)):
            draw.line(seam, fill=outline, width=lw)
    elif sport == "volleyball":
        for start, end in ((200, 340), (20, 160)):
            draw.chord(box, start, end, fill=(250, 215, 30))


def _ball_centre(sport: str, feet: list[Point], hand: Point, w: int, h: int, top: int,
                 rng: random.Random) -> Point:
    """The ball at a player's feet (football), in a hand (basketball) or in the air."""
    if sport == "football":
        fx, fy = rng.choice(feet)
        return fx + rng.choice((-1, 1)) * rng.uniform(0.06, 0.1) * h, fy - 0.04 * h
    if sport == "basketball" and rng.random() < 0.5:
        return hand
    return rng.uniform(0.15, 0.85) * w, rng.uniform(0.06, 0.9) * top


def draw_scene(scene: dict[str, Any], size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Draw `scene` as an RGB image of `size` (width, height); layout details come from `rng`."""
    w, h = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    top = _draw_setting(draw, scene, w, h, rng)
    shirt = _jitter(SHIRTS[scene["shirt"]], rng, 8)
    n = scene["n_players"]  # one per equal slot across the width, so they never merge
    feet = sorted([(w / n * (i + rng.uniform(0.3, 0.7)), h * rng.uniform(0.8, 0.95))
                   for i in range(n)], key=lambda f: f[1])
    hands = [_draw_player(draw, foot, h * 0.42 * rng.uniform(0.87, 1.15), shirt, scene["sport"],
                          rng) for foot in feet]
    centre = _ball_centre(scene["sport"], feet, rng.choice(hands), w, h, top, rng)
    _draw_ball(draw, scene["sport"], *centre, h)
    # mild Gaussian pixel noise, seeded from `rng`, so images are not flat-coloured
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    pixels = np.asarray(img.resize(size, Image.Resampling.LANCZOS), dtype=np.int16)
    pixels = pixels + noise_rng.normal(0, 3.0, pixels.shape).round().astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def generate(out_dir: str | Path, n_images: int = 300, seed: int = 0, lang: str = "vi",
             overwrite: bool = False, defects: bool = False) -> Path:
    """Draw `n_images` JPEGs (image i from (seed, i) only) into out_dir/images/, captions.json
    beside; a non-empty folder needs `overwrite`; `defects` (≥ 8 images): notebook 01's set."""
    if n_images < 1:
        raise VicapError(f"--n-images must be at least 1, got {n_images}")
    if lang not in LANGS:
        raise VicapError(f"unknown language {lang!r} (choose from {', '.join(LANGS)})")
    with output_folder(out_dir, "synth", SYNTH_OUTPUTS, overwrite=overwrite, empty=True) as out:
        _refuse_foreign_images(out)
        with staged(out) as tmp:
            _draw_set(tmp, n_images, seed, lang, defects)
    return out / "captions.json"


def _refuse_foreign_images(out: Path) -> None:
    """Refuse to replace images/ holding a file captions.json does not list: the user's."""
    drawn: set[str] = set()
    with contextlib.suppress(VicapError, TypeError, KeyError):
        drawn = {str(info["file_name"]) for info in
                 read_json(out / "captions.json", "synthetic captions")["images"]}
    foreign = sorted(set(visible_entries(out / "images")) - drawn)
    if foreign:
        raise VicapError(f"{out / 'images' / foreign[0]}: vicap did not draw it, and --overwrite "
                         "would replace images/; move it away or pick another --out")


def _draw_set(folder: Path, n_images: int, seed: int, lang: str, defects: bool) -> None:
    """Draw the images and write the captions file into `folder`, defects planted if asked."""
    (folder / "images").mkdir()
    images, annotations = [], []
    for i in progress(range(n_images), desc="vicap synth", unit="img",
                      disable=True if n_images < 50 else None):
        rng = random.Random(f"vicap-synth:{seed}:{i}")
        scene = random_scene(rng)
        file_name = f"synth_{i:06d}.jpg"
        draw_scene(scene, SIZE, rng).save(folder / "images" / file_name, "JPEG", quality=90)
        images.append({"id": i + 1, "file_name": file_name, "width": SIZE[0], "height": SIZE[1],
                       "scene": scene})
        annotations += [{"id": len(annotations) + k + 1, "image_id": i + 1, "caption": caption}
                        for k, caption in enumerate(captions_for(scene, lang, rng))]
    info = {"description": "vicap synthetic ball-sports captions", "version": "1",
            "lang": lang, "seed": seed, "generator": "vicap_utils.toy.data"}
    if defects:
        _plant_defects(folder, images, annotations)
    atomic_write_json(folder / "captions.json",
                      {"info": info, "images": images, "annotations": annotations})


def _plant_defects(folder: Path, images: list[dict], annotations: list[dict]) -> None:
    """Each audit reason planted: ten in the COCO lists, `malformed_line` in a captions.txt;
    six images resized and 1-5 captions per image, so that the statistics vary."""
    first, n, a0 = images[0]["file_name"], len(images), annotations[0]
    rows = "".join(f'{first},"{a["caption"]}"\n' for a in annotations[:5])
    (folder / "captions.txt").write_text(f'image,caption\n{rows}{first},"no end quote\n', "utf-8")
    for k, info in enumerate(images[2:8], 1):
        path, size = folder / "images" / info["file_name"], (40 + 40 * k, 60 + 30 * (k % 3))
        with Image.open(path) as image:
            image.resize(size).save(path, "JPEG", quality=90)
        info["width"], info["height"] = size
    broken = folder / "images" / images[1]["file_name"]  # unreadable_image, orphaned_by_image
    broken.write_bytes(broken.read_bytes()[:300])
    annotations[:] = [a for a in annotations if a["image_id"] != 4  # image_without_captions
                      and (a["id"] - 1) % 5 <= a["image_id"] % 5]
    images += [{"id": n + 1, "file_name": "missing.jpg"}, {"id": n + 2, "file_name": "../x.jpg"}]
    planted = [(n + 1, "Ảnh không có tệp."), (n + 2, "Tệp ngoài thư mục ảnh."),
               (n + 9, "Ảnh không có trong danh sách."), (1, a0["caption"].upper()), (1, " . "),
               (1, 42)]
    annotations += [{"id": 5 * n + k, "image_id": i, "caption": c}
                    for k, (i, c) in enumerate(planted, 1)]
    annotations.append({**a0, "caption": "Một câu khác, cùng id."})  # duplicate_annotation_id


def cli_synth(args: argparse.Namespace) -> int:
    """`vicap synth`: draw the set and print one summary line."""
    path = generate(args.out, n_images=args.n_images, seed=args.seed, lang=args.lang,
                    overwrite=args.overwrite)
    print(f"vicap synth: {args.n_images} images, {args.n_images * 5} {args.lang} captions "
          f"-> {path}")
    return 0


def builtin_data(data: DataConfig) -> tuple[Path, Path] | None:
    """(captions file, images folder) of a `synthetic` data source's cached set, else None."""
    if data.source != "synthetic":
        return None
    folder = synthetic_set(data.lang, data.synthetic_images, data.synthetic_seed)
    return folder / "captions.json", folder / "images"


def sample_images(n: int, seed: int = 2024, size: tuple[int, int] = (320, 240)) -> dict:
    """{label: image} of synthetic scenes drawn in memory, for demos without a data set."""
    out = {}
    for i in range(n):
        rng = random.Random(f"vicap-demo:{seed}:{i}")
        scene = random_scene(rng)
        out[f"synthetic {i + 1} · {scene['sport']}"] = draw_scene(scene, size, rng)
    return out


def synthetic_set(lang: str, n_images: int, seed: int) -> Path:
    """The cached synthetic caption set for (lang, n, seed); drawn on first use."""
    folder = cache_dir("synthetic") / f"{lang}-n{n_images}-s{seed}"
    with FileLock(folder.with_name(f".{folder.name}.lock")):
        if not (folder / "captions.json").is_file():
            with atomic_dir(folder) as tmp:
                generate(tmp, n_images=n_images, seed=seed, lang=lang)
    return folder
