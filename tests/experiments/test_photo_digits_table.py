"""The photo-digits table's layout, from hand-made run results (the runs themselves are the README's)."""

from experiments import photo_digits_table as table

ALL = {"linear_probe": 1.0, "knn": 1.0}


def _run(seed, lp, knn, colour):
    probes = {"linear_probe": lp, "knn": knn}
    return {"seed": seed, "minutes": 2.0, "steps_per_s": 1.5, "resumed": False,
            "eval": {"step": 10, "knn_k": 200, "knn_temperature": 0.07, "learned": probes,
                     "random_init": {"linear_probe": 0.2, "knn": 0.1},
                     "attributes": {"colour": {"classes": 13, "majority": 0.125,
                                               "learned": {"linear_probe": colour, "knn": 0.5},
                                               "random_init": {"linear_probe": 0.3, "knn": 0.25}},
                                    "place": {"classes": 9, "majority": 1.0, "learned": ALL, "random_init": ALL}}}}


def test_the_attribute_table_has_a_row_per_representation_and_a_column_per_attribute():
    rows = {"clip": [_run(0, 0.30, 0.10, 0.90), _run(1, 0.40, 0.20, 0.80)]}
    raw = [{"linear_probe": 0.26, "knn": 0.45}] * 2
    text = table.summarise(rows, raw, [0, 1], "python experiments/photo_digits_table.py --attributes")
    assert "| clip: CLIP on the captions (image tower) | 10 | 35.00 ± 7.07 | 15.00 ± 7.07 |" in text
    assert "colour (13 classes, majority 12.5%)" in text
    assert "| features | digit | colour |" in text  # place, constant here, left out
    assert "Left out, one class on every test image: place." in text
    assert "| clip: learned | 35.00 ± 7.07 / 15.00 ± 7.07 | 85.00 ± 7.07 / 50.00 ± 0.00 |" in text
    assert "| clip: random init | 20.00 ± 0.00 / 10.00 ± 0.00 | 30.00 ± 0.00 / 25.00 ± 0.00 |" in text
