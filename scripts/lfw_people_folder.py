"""A people folder (one sub-folder of photos per person) of every LFW image of the people in some View 2 folds,
for `biometrics evaluate folder`: the held-out people of the shipped students are those of folds 6-10.

    python scripts/lfw_people_folder.py --folds 6-10 /tmp/lfw-folds6-10
    biometrics evaluate folder /tmp/lfw-folds6-10 --embedder sface-student --embedder sface-teacher \
        --out reports/folder-lfw-folds6-10

The folder holds symbolic links to the unpacked LFW images (nothing is copied). Unlike `evaluate lfw` (the 600
listed pairs per fold), every pair of the people's images is scored, so the card thresholds' false-match rate
is measured on millions of held-out impostor pairs. With ``--pairs-only`` the folder holds just the images named
in the folds' pairs: those whose cross-identity pairs `evaluate lfw` calibrates on. With ``--more-than K`` only
the people with more than K photos are taken (a gallery of K photos each, and the same people with one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biometrics.evaluation.lfw import images_in_folds, locate_images, parse_folds, people_in_folds, read_pairs
from biometrics.registry import shared_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="new folder to create")
    parser.add_argument("--folds", default="6-10", help="View 2 folds whose people to take (default 6-10)")
    parser.add_argument("--data", type=Path, default=None, help="LFW folder (default: ../shared/data/lfw)")
    parser.add_argument("--pairs-only", action="store_true", help="only the images named in the folds' pairs")
    parser.add_argument("--more-than", type=int, default=0, metavar="K", help="only people with more than K photos")
    args = parser.parse_args()
    data = args.data or shared_data("lfw")
    folds = parse_folds(args.folds)
    pairs = read_pairs(data / "pairs.txt")
    named = set(images_in_folds(pairs, folds))
    images = locate_images(data)
    photos = {
        person: [
            p for p in sorted((images / person).glob("*.jpg")) if not args.pairs_only or f"{person}/{p.name}" in named
        ]
        for person in sorted(people_in_folds(pairs, folds))
    }
    people = [person for person, theirs in photos.items() if len(theirs) > args.more_than]
    args.out.mkdir(parents=True)
    count = 0
    for person in people:
        (args.out / person).mkdir()
        for photo in photos[person]:
            (args.out / person / photo.name).symlink_to(photo.resolve())
            count += 1
    print(f"{args.out}: {count} photos of {len(people)} people (LFW View 2 folds {args.folds})")


if __name__ == "__main__":
    main()
