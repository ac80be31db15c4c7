"""Writes tests/data/penguins.csv: a penguins-like table with categorical columns and
missing values, deterministic (seeded), so the fixture can be regenerated and checked.

    python tests/data/make_penguins.py > tests/data/penguins.csv
"""

from __future__ import annotations

import csv
import random
import sys

SPECIES = {
    # species: (islands, bill length, bill depth, flipper length, body mass)
    "Adelie": (("Torgersen", "Biscoe", "Dream"), 38.8, 18.3, 190.0, 3700),
    "Chinstrap": (("Dream",), 48.8, 18.4, 195.8, 3733),
    "Gentoo": (("Biscoe",), 47.5, 15.0, 217.2, 5076),
}
COUNTS = {"Adelie": 150, "Chinstrap": 70, "Gentoo": 120}


def rows(seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    for species, (islands, bill_len, bill_depth, flipper, mass) in SPECIES.items():
        for _ in range(COUNTS[species]):
            row: dict[str, object] = {
                "species": species,
                "island": rng.choice(islands),
                "bill_length_mm": round(rng.gauss(bill_len, 2.8), 1),
                "bill_depth_mm": round(rng.gauss(bill_depth, 1.1), 1),
                "flipper_length_mm": round(rng.gauss(flipper, 6.5)),
                "body_mass_g": round(rng.gauss(mass, 420)),
                "sex": rng.choice(("male", "female")),
                "year": rng.choice((2007, 2008, 2009)),
            }
            # Missing values, as in the real data: a few measurements and sexes unknown.
            for column, rate in (
                ("bill_length_mm", 0.02),
                ("body_mass_g", 0.02),
                ("sex", 0.04),
                ("island", 0.01),
            ):
                if rng.random() < rate:
                    row[column] = ""
            out.append(row)
    rng.shuffle(out)
    return out


def write(stream: object, seed: int = 7) -> None:
    data = rows(seed)
    writer = csv.DictWriter(stream, fieldnames=list(data[0]), lineterminator="\n")  # type: ignore[arg-type]
    writer.writeheader()
    writer.writerows(data)


if __name__ == "__main__":
    write(sys.stdout)
