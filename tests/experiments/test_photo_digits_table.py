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


def test_minutes_average_the_timed_runs_only_and_say_how_many():
    runs = [_run(0, 0.3, 0.1, 0.9), _run(1, 0.4, 0.2, 0.8), _run(2, 0.5, 0.3, 0.7)]
    runs[0]["minutes"], runs[1]["minutes"], runs[2]["minutes"] = None, 10.0, 14.0
    text = table.summarise({"moco": runs}, [{"linear_probe": 0.26, "knn": 0.45}] * 3, [0, 1, 2], "cmd")
    assert "| 12.0 (2 of 3 runs timed) | 1.50 |" in text
    assert "Zero-shot" not in text
    for run in runs:
        run["minutes"] = None
    assert "| - | 1.50 |" in table.summarise({"moco": runs}, [{"linear_probe": 0.26, "knn": 0.45}] * 3,
                                             [0, 1, 2], "cmd")


def test_a_resumed_run_keeps_the_minutes_of_the_invocation_that_trained_it(tmp_path):
    assert table.run_minutes(tmp_path, 0.5, resumed=True) is None  # trained before minutes were kept
    assert table.run_minutes(tmp_path, 15.0, resumed=False) == 15.0
    assert table.run_minutes(tmp_path, 0.5, resumed=True) == 15.0


def test_image_text_runs_add_their_zero_shot_accuracy():
    runs = [_run(0, 0.3, 0.1, 0.9), _run(1, 0.4, 0.2, 0.8)]
    runs[0]["eval"]["zero_shot"], runs[1]["eval"]["zero_shot"] = 0.8, 0.6
    text = table.summarise({"clip": runs}, [{"linear_probe": 0.26, "knn": 0.45}] * 2, [0, 1], "cmd")
    assert "Zero-shot top-1, test %: clip 70.00 ± 14.14." in text


def test_the_minutes_name_the_machine_they_were_measured_on():
    runs = [_run(0, 0.3, 0.1, 0.9)]
    raw = [{"linear_probe": 0.26, "knn": 0.45}]
    text = table.summarise({"moco": runs}, raw, [0], "cmd", on="1 x NVIDIA H200")
    assert "evaluation on 1 x NVIDIA H200; read" in text
    assert table.machine().endswith("-core CPU")  # the tests run on CPU devices


def test_one_seed_is_printed_without_a_spread():
    assert table.stat([0.5]) == "50.00" and table.stat([0.5, 0.7]) == "60.00 ± 14.14"


def test_the_readme_table_has_a_row_per_config_and_one_raw_pixel_row_per_dataset(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(table, "RESULTS", tmp_path)
    raw = [{"linear_probe": 0.26, "knn": 0.45}] * 2
    for name, dataset, label in (("a", "photo_digits", "simclr"), ("b", "photo_digits", "moco"),
                                 ("c", "photo_digits_large", "clip")):
        runs = [_run(0, 0.3, 0.1, 0.9), _run(1, 0.4, 0.2, 0.8)]
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"dataset": dataset, "command": "cmd", "runs": {label: runs}, "raw_pixels": raw, "seeds": [0, 1]}))
    lines = table.readme_table(["a", "b", "c"]).splitlines()
    assert lines[2] == ("| `photo_digits` | SimCLR / NT-Xent | 0, 1 | 10 | 35.00 ± 7.07 | 15.00 ± 7.07 | 20.00 ± 0.00 "
                        "| 10.00 ± 0.00 | 2.0 | 1.50 | `a` |")
    assert lines[3].startswith("| `photo_digits` | MoCo v2") and lines[4].startswith("| `photo_digits_large` | CLIP")
    assert lines[5:] == ["| `photo_digits` | raw pixels (3,072 values) | 0, 1 | - | 26.00 ± 0.00 | 45.00 ± 0.00 | - "
                         "| - | - | - | `a` |",
                         "| `photo_digits_large` | raw pixels (3,072 values) | 0, 1 | - | 26.00 ± 0.00 | 45.00 ± 0.00 "
                         "| - | - | - | - | `c` |"]


def test_the_readme_shows_the_table_of_the_saved_results():
    readme = (table.ROOT / "README.md").read_text()
    block = table.readme_table(table.README_RESULTS)
    assert f"<!-- photo-digits-table:begin -->\n{block}<!-- photo-digits-table:end -->" in readme
