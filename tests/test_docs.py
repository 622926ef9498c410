"""The documentation works as written: every `biometrics` command in the READMEs' bash blocks is one the CLI
accepts (commands, options, choices, recipe files), every `python scripts/...` one its script's parser accepts, the
Python example runs, and every report they cite is there."""

from __future__ import annotations

import argparse
import json
import re
import runpy
import shlex
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import click
import pytest

from biometrics.cli.main import cli
from tests.conftest import ROOT, code_blocks

DOCS = [ROOT / "README.md", ROOT / "pipelines" / "README.md"]
OPERATORS = {";", "&&", "||", "|", "&"}
VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def simple_commands(block: str) -> list[list[str]]:
    """The block's simple commands as words, split at ; && || | & and line ends (comments dropped)."""
    commands, words = [], []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        for word in [*lexer, ";"]:
            if word in OPERATORS:
                commands += [words] if words else []
                words = []
            else:
                words.append(word)
    return commands


def expanded_commands(block: str) -> Iterator[list[str]]:
    """What the shell would run: variables the block assigns expanded (unquoted ones word-split), ``for`` loops
    unrolled; a command's own prefix assignments (``BIOMETRICS_MODELS=... biometrics ...``) are dropped."""
    variables: dict[str, str] = {}

    def expand(word: str) -> str:
        return VARIABLE.sub(lambda match: variables.get(match[1], match[0]), word)

    def resolve(words: list[str]) -> Iterator[list[str]]:
        if len(words) == 1 and re.fullmatch(r"\w+=.*", words[0]):
            name, value = words[0].split("=", 1)
            variables[name] = expand(value)
            return
        while words and re.fullmatch(r"\w+=.*", words[0]):
            words = words[1:]
        out = []
        for word in words:
            out += shlex.split(expand(word)) if VARIABLE.fullmatch(word) else [expand(word)]
        yield out

    commands = simple_commands(block)
    while commands:
        words = commands.pop(0)
        if words[0] != "for":
            yield from resolve(words)
            continue
        name, values, body = words[1], words[3:], []
        while (words := commands.pop(0)) != ["done"]:
            words = words[1:] if words[0] == "do" else words  # `do` may end a line
            body += [words] if words else []
        for value in values:
            variables[name] = value
            for words in body:
                yield from resolve(words)


def documented_commands() -> list:
    """One test case per bash block of the docs: (where, its commands)."""
    cases = []
    for path in DOCS:
        for i, block in enumerate(code_blocks(path, "bash"), start=1):
            where = f"{path.relative_to(ROOT)}, bash block {i}"
            cases.append(pytest.param(where, list(expanded_commands(block)), id=where))
    return cases


def parse(args: list[str]) -> click.Context:
    """Parse a command line as ``biometrics`` would (commands, options, types, required values) without running it."""
    command, context, args = cli, None, list(args)
    while isinstance(command, click.Group):
        context = click.Context(command, info_name=command.name, parent=context)
        name = args.pop(0)
        command = command.get_command(context, name)
        if command is None:
            raise click.UsageError(f"no such command '{name}'")
    return command.make_context(command.name, args, parent=context)


class ArgumentsParsed(Exception):
    """Raised where a script would start its work: its arguments parsed, nothing run."""


def script_parse_error(script: Path, args: list[str], monkeypatch, capsys) -> str | None:
    """Why ``python SCRIPT ARGS`` would be refused by the script's own argparse parser, or None if accepted. The
    script runs up to its ``parse_args`` and stops there."""
    if not script.is_file():
        return "no such script"
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, argv=None, namespace=None):
        parse_args(parser, argv, namespace)
        raise ArgumentsParsed

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        patch.setattr(sys, "argv", [str(script), *args])
        try:
            runpy.run_path(str(script), run_name="__main__")
        except ArgumentsParsed:
            return None
        except SystemExit:
            return capsys.readouterr().err.strip().splitlines()[-1]
    return "the script never parsed its arguments"


def test_the_shell_reading_of_a_block_follows_bash():
    block = 'T="--embedder a --embedder b"\nfor s in x y; do biometrics distill r-$s.yaml \\\n    --out o; done\n'
    block += 'M=/tmp/m biometrics evaluate lfw $T --out r  # a comment | not a pipe\nS="$S --detector d"'
    assert list(expanded_commands(block)) == [
        ["biometrics", "distill", "r-x.yaml", "--out", "o"],
        ["biometrics", "distill", "r-y.yaml", "--out", "o"],
        ["biometrics", "evaluate", "lfw", "--embedder", "a", "--embedder", "b", "--out", "r"],
    ]


@pytest.mark.parametrize(("where", "commands"), documented_commands())
def test_every_documented_command_is_one_the_cli_accepts(where, commands, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the docs' commands run from the repository root
    written = set()  # files an earlier command of the block writes (--pack-faces, --out, a script's), not there yet
    for words in commands:
        line = " ".join(words)
        if words[0] in ("python", "python3") and words[1].endswith(".py"):
            error = script_parse_error(Path(words[1]), words[2:], monkeypatch, capsys)
            assert error is None, f"{where}: `{line}`: {error}"
            written |= {word for word in words[2:] if "/" in word and not Path(word).exists()}  # what it makes
        if Path(words[0]).name != "biometrics" or any(word.startswith("[") for word in words):
            continue  # not ours, or a synopsis ([--option]...) rather than a command
        try:
            parse(words[1:])
        except click.BadParameter as exc:
            if not any(path in str(exc) for path in written):
                pytest.fail(f"{where}: `{line}`: {exc.format_message()}")
        except click.ClickException as exc:
            pytest.fail(f"{where}: `{line}`: {exc.format_message()}")
        written |= {value for option, value in pairwise(words) if option in ("--pack-faces", "--out")}


def options_of(command: click.Command) -> dict[str, click.Parameter]:
    """Every option a command (or, for a group, any of its commands) takes, by name."""
    if isinstance(command, click.Group):
        return {name: param for sub in command.commands.values() for name, param in options_of(sub).items()}
    return {name: param for param in command.params for name in (*param.opts, *param.secondary_opts)}


def test_every_option_in_the_docs_synopses_exists():
    """The synopses (`biometrics verify A.jpg B.jpg [--json] [--select largest|center|score] ...`) name only
    options their command has, and only choices those options offer."""
    checked = choices = 0
    for path in DOCS:
        for block in code_blocks(path, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                text = line.split("#")[0]
                words = text.split()
                if not words or words[0] != "biometrics" or "[" not in text:
                    continue
                group = cli  # alternatives after " | " are other commands of the same group (`gallery list | remove`)
                for i, alternative in enumerate(text.split(" | ")):
                    command = cli if i == 0 else group
                    for word in alternative.split()[1 if i == 0 else 0 :]:
                        if not (isinstance(command, click.Group) and word in command.commands):
                            break
                        group, command = command, command.commands[word]
                    options, where = options_of(command), f"{path.relative_to(ROOT)}: `{line.strip()}`"
                    unknown = set(re.findall(r"--[\w-]+", alternative)) - set(options)
                    assert not unknown, f"{where}: no option {sorted(unknown)}"
                    for option, values in re.findall(r"(--[\w-]+) ([\w.-]+(?:\|[\w.-]+)+)", alternative):
                        if isinstance(options[option].type, click.Choice):
                            wrong = set(values.split("|")) - set(options[option].type.choices)
                            assert not wrong, f"{where}: {option} has no choice {sorted(wrong)}"
                            choices += 1
                    checked += 1
    assert checked >= 10 and choices >= 2


def test_a_wrong_option_in_the_docs_would_be_caught():
    with pytest.raises(click.NoSuchOption):
        parse(["evaluate", "lfw", "--fold", "6-10", "--out", "r"])
    with pytest.raises(click.BadParameter):
        parse(["distill", "pipelines/no-such-recipe.yaml"])
    with pytest.raises(click.UsageError):
        parse(["evaluate", "lwf", "--out", "r"])


def test_a_wrong_script_option_in_the_docs_would_be_caught(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    script = Path("scripts/cross_distillation_report.py")
    assert script_parse_error(script, ["a.json:x", "b.json:y", "--out", "r"], monkeypatch, capsys) is None
    error = script_parse_error(script, ["a.json:x", "b.json:y", "--output", "r"], monkeypatch, capsys)
    assert error.endswith("error: the following arguments are required: --out")
    error = script_parse_error(script, ["a.json:x", "b.json:y", "--out", "r", "--folds", "6-10"], monkeypatch, capsys)
    assert error.endswith("error: unrecognized arguments: --folds 6-10")
    assert script_parse_error(Path("scripts/no_such.py"), [], monkeypatch, capsys) == "no such script"


def test_the_python_example_runs_as_written(tmp_path, monkeypatch, sample):
    """README's Python block, with its file names pointing at sample photos and a small people folder."""
    (example,) = code_blocks(ROOT / "README.md", "python")
    for name, photo in {"a.jpg": "obama.jpg", "b.jpg": "obama2.jpg", "group.jpg": "multiface.jpg"}.items():
        (tmp_path / name).symlink_to(sample(photo))
    (tmp_path / "mine.onnx").symlink_to(ROOT / "models" / "sface-student" / "model.onnx")  # a card-less embedder
    for person, photos in {"obama": ["obama.jpg", "obama2.jpg"], "biden": ["biden.jpg", "biden2.jpg"]}.items():
        (tmp_path / "people" / person).mkdir(parents=True)
        for photo in photos:
            (tmp_path / "people" / person / photo).symlink_to(sample(photo))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md (python)", "exec"), namespace)
    assert namespace["teacher"].name == "yunet-teacher + sface-teacher"
    assert namespace["mine"].embedder.name == "mine" and namespace["mine"].threshold == 0.4
    assert namespace["result"].faces_found[1] == 6 and len(namespace["faces"]) == 6
    assert namespace["rates"]["genuine_pairs"] == 2 and namespace["rates"]["impostor_pairs"] == 4
    assert [found.identity for found in namespace["found"]] == ["obama"]
    assert namespace["claim"].accepted and namespace["claim"].templates == 1


def test_every_report_the_docs_cite_is_in_the_repository():
    """The numbers in the READMEs and model cards point at reports (`reports/lfw-students-patient-folds6-10`); each
    must be there, unless a documented command is what writes it (its `--out`)."""
    written = {
        value
        for path in DOCS
        for block in code_blocks(path, "bash")
        for words in expanded_commands(block)
        for option, value in pairwise(words)
        if option == "--out"
    }
    citing = [*DOCS, *sorted((ROOT / "models").glob("*/card.json"))]
    missing, cited_count = [], 0
    for path in citing:
        text = path.read_text()
        # A path a shell variable completes (`--out reports/x/side-$side`) is checked as its unrolled loop writes it.
        found = re.finditer(r"reports/[\w.-]+(?:/[\w.-]+)*", text)
        for cited in {match[0] for match in found if not text.startswith("$", match.end())}:
            cited = cited.rstrip(".")
            cited_count += 1
            if not (ROOT / cited).exists() and not any(cited == out or cited.startswith(f"{out}/") for out in written):
                missing.append(f"{path.relative_to(ROOT)}: {cited}")
    assert cited_count > 50 and not missing, missing


def _matches_printed(printed: str, value: float) -> bool:
    """Whether ``printed`` ("2.47", "149", "0.12") is ``value`` rounded to the digits it shows."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(float(printed) - value) <= 0.5 * 10**-decimals + 1e-9


def test_the_readme_headline_table_quotes_the_model_cards():
    """ "What you get today": each model's latency, parameters, MACs, file size and LFW accuracy are its card's
    (which test_models checks against the reports), as printed."""
    from biometrics.registry import ModelRegistry

    registry = ModelRegistry([ROOT / "models"])
    section = (ROOT / "README.md").read_text().split("## What you get today")[1].split("\n#")[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| `")]
    checked = 0
    for model_cell, _, accuracy, latency, params, macs, size in rows:
        names = re.findall(r"`([\w.-]+)`", model_cell.split("(")[0])
        measured = registry.card(names[-1]).data["measured"]
        if accuracy.strip():
            lfw = measured["lfw"]
            assert lfw["pipeline"] == " + ".join(names) or lfw["pipeline"].startswith(f"{names[-1]} + ")
            quoted = f"{100 * lfw['accuracy_mean']:.2f}% ± {100 * lfw['accuracy_std']:.2f}"
            assert quoted in accuracy, f"{model_cell}: the card says {quoted}"
            checked += 1
        if latency.strip():
            efficiency = measured["efficiency"]
            printed = [re.search(r"[\d.]+", cell)[0] for cell in (latency, params, macs, size)]
            actual = [
                efficiency["latency_ms_batch1_1thread"]["p50_ms"],
                efficiency["parameters"] / 1e6,
                efficiency["macs"] / 1e6,
                efficiency["file_size_bytes"] / 1e6,
            ]
            assert all(map(_matches_printed, printed, actual)), f"{model_cell}: {printed}, the card says {actual}"
            checked += 1
    assert checked >= 8


def test_the_readme_identification_table_quotes_its_report():
    """The 1:N table under "Your own photos": rank-1, FPIR and FNIR at the card threshold, FPIR by gallery size and
    the FPIR-1% threshold with its FNIR, as reports/folder-lfw-folds6-10 measured them."""
    results = json.loads((ROOT / "reports/folder-lfw-folds6-10/report.json").read_text())["results"]
    section = (ROOT / "README.md").read_text().split("Searched 1:N in the same report")[1].split("\n\n")[1]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| yunet")]
    assert len(rows) == 2
    for pipeline, rank_1, at_threshold, by_size, at_one_percent in rows:
        run = results[pipeline.split(" (")[0].strip()]["identification"]
        point, strict = run["at_threshold"], run["at_fpir"]["1e-2"]
        assert f"({point['threshold']})" in pipeline
        quoted = [
            (rank_1, f"{100 * run['rank_1']:.2f}%"),
            (at_threshold, f"{100 * point['fpir']:.3g}% / {100 * point['fnir']:.3g}%"),
            (by_size, " / ".join(f"{100 * row['fpir_at_threshold']:.3g}%" for row in run["by_gallery_size"])),
            (at_one_percent, f"{strict['threshold']:.4f}: {100 * strict['fnir']:.3g}%"),
        ]
        assert all(cell.strip() == expected for cell, expected in quoted), (pipeline, quoted)
        assert [row["people"] for row in run["by_gallery_size"]] == [1, 10, 100, 854]  # the column heading


def test_the_readme_table_of_identifys_thresholds_quotes_its_report():
    """The table of `identify`'s default thresholds (set for each gallery size from the card): threshold and FPIR
    with 10, 100 and 854 people, and FNIR with 854, as reports/folder-lfw-folds6-10 measured them; and the sentence
    on a gallery of three photos each (reports/folder-lfw-folds6-10-3photos)."""
    results = json.loads((ROOT / "reports/folder-lfw-folds6-10/report.json").read_text())["results"]
    section = (ROOT / "README.md").read_text().split("whom neither the calibration nor the student saw:")[1]
    rows = [line.split("|")[1:-1] for line in section.split("\n\n")[1].splitlines() if line.startswith("| yunet")]
    assert len(rows) == 2
    for pipeline, thresholds, fpirs, fnir in rows:
        run = results[pipeline.strip()]["identification"]
        sizes = run["by_gallery_size"][1:]
        assert [row["people"] for row in sizes] == [10, 100, 854]  # the column heading
        quoted = [
            (thresholds, " / ".join(f"{row['size_threshold']:.4f}" for row in sizes)),
            (fpirs, " / ".join(f"{100 * row['fpir_at_size_threshold']:.3g}%" for row in sizes)),
            (fnir, f"{100 * run['at_size_threshold']['fnir']:.3g}%"),
        ]
        assert all(cell.strip() == expected for cell, expected in quoted), (pipeline, quoted)
    three = json.loads((ROOT / "reports/folder-lfw-folds6-10-3photos/report.json").read_text())["results"]
    ours, sface = (three[f"yunet-teacher + {name}"]["identification"] for name in ("sface-student", "sface-teacher"))
    assert (ours["gallery_people"], ours["templates"]) == (319, 957)
    ours, sface = ours["at_size_threshold"], sface["at_size_threshold"]
    quoted = (
        f"searched at {ours['threshold']:.4f} and names {100 * ours['fpir']:.2f}% of strangers (SFace at "
        f"{sface['threshold']:.4f}: {100 * sface['fpir']:.2f}%), and the\n"
        f"misses are {100 * ours['fnir']:.1f}% (SFace {100 * sface['fnir']:.2f}%)"
    )
    assert quoted in (ROOT / "README.md").read_text()
    same_people = []
    for photos in ("1photo", "3photos"):
        report = ROOT / f"reports/folder-lfw-folds6-10-many-{photos}/report.json"
        for run in json.loads(report.read_text())["results"].values():
            point = run["identification"]["at_size_threshold"]
            same_people.append(f"{100 * point['fpir']:.3g}% and {100 * point['fnir']:.3g}%")
    ours_1, sface_1, ours_3, sface_3 = same_people
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"the student names {ours_1.replace(' and ', ' of strangers and misses ')}" in readme
    assert f"at 0.5114, {ours_3} (SFace: {sface_1}, then {sface_3};" in readme


def test_the_readme_quotes_the_claims_verify_as_was_measured_on():
    """The `verify --as` table and the one-template rates after it, as the many-people reports have them."""
    readme = (ROOT / "README.md").read_text()
    reports = {k: ROOT / f"reports/folder-lfw-folds6-10-many-{k}/report.json" for k in ("1photo", "3photos")}
    one, three = (json.loads(path.read_text())["results"] for path in reports.values())
    for label, run in three.items():
        claims = run["identification"]["claims"]
        cells = [
            f"{point['threshold']:.4f}: {100 * point['fmr']:.3g}% / {100 * point['fnmr']:.3g}%"
            for point in (claims["at_threshold"], claims["at_claim_threshold"])
        ]
        assert f"| {label} | {cells[0]} | {cells[1]} |" in readme
    assert f"{claims['genuine_claims']:,} genuine and {claims['impostor_claims']:,} impostor claims" in readme
    student, sface = (
        one[f"yunet-teacher + {name}"]["identification"]["claims"] for name in ("sface-student", "sface-teacher")
    )
    fmr = [f"{100 * claims['at_threshold']['fmr']:.3g}%" for claims in (student, sface)]
    assert f"{fmr[0]} for the student, {fmr[1]} for SFace" in " ".join(readme.split())
    three_student = three["yunet-teacher + sface-student"]["identification"]["claims"]["at_claim_threshold"]
    rejections = f"from {100 * student['at_threshold']['fnmr']:.3g}% (one photo) to {100 * three_student['fnmr']:.3g}%"
    assert rejections in " ".join(readme.split())


def test_the_readme_says_who_the_strangers_named_are_as_its_report_lists_them():
    """The sentence on the false positives at identify's threshold with 854 people: FPIR per search and per
    person, and the people named most, as reports/folder-lfw-folds6-10-vnni lists them."""
    results = json.loads((ROOT / "reports/folder-lfw-folds6-10-vnni/report.json").read_text())["results"]
    ours, sface = (results[f"yunet-teacher + {name}"]["identification"] for name in ("sface-student", "sface-teacher"))
    bush, *_ = ours["strangers_named"]["people"]
    sface_bush, roh, *_ = sface["strangers_named"]["people"]
    at, sface_at = ours["at_size_threshold"], sface["at_size_threshold"]
    assert ours["strangers_named"]["threshold"] == at["threshold"]  # listed where the rates are counted
    quoted = (
        f"FPIR {100 * at['fpir']:.3g}% with 854 people there), {bush['named']} of the student's "
        f"{at['false_positives']} false positives are photos of George W. Bush, {bush['searches']} of the "
        f"{ours['non_mated_searches']:,} searches, {bush['mostly_as_times']} of them taken for Kurt Russell, whose one "
        f"enrolled photo resembles him; counted once per person searched, it names {100 * at['fpir_per_person']:.3g}% "
        f"of strangers, SFace {100 * sface_at['fpir_per_person']:.3g}% (its {sface_at['false_positives']} false "
        f"positives include {sface_bush['named']} of Bush's photos and {roh['named']} of Roh Moo-hyun's, taken for "
        "Jia Qinglin)"
    )
    assert (bush["person"], bush["mostly_as"], sface_bush["person"]) == (
        "George_W_Bush",
        "Kurt_Russell",
        bush["person"],
    )
    assert (roh["person"], roh["mostly_as"]) == ("Roh_Moo-hyun", "Jia_Qinglin")
    assert quoted in " ".join((ROOT / "README.md").read_text().split())


def test_the_readme_face_size_table_quotes_its_report():
    """Each row of the accuracy-by-face-size table as reports/lfw-face-size measured it."""
    rows = json.loads((ROOT / "reports/lfw-face-size/report.json").read_text())["rows"]
    section = (ROOT / "README.md").read_text().split("| image side | face width / eye distance (median) |")[1]
    printed = [line.split("|")[1:-1] for line in section.split("\n\n")[0].splitlines()[2:]]
    assert len(printed) == len(rows)
    for cells, row in zip(printed, rows, strict=True):
        student, teacher = (row["pipelines"][f"yunet-teacher + {name}"] for name in ("sface-student", "sface-teacher"))
        expected = [
            f"{row['image_side']} px",
            f"{row['face_width_px']:.0f} / {row['eye_distance_px']:.0f} px",
            f"{100 * student['accuracy_mean']:.2f}%",
            f"{100 * teacher['accuracy_mean']:.2f}%",
            str(student["no_face_found"]),
        ]
        assert [cell.strip() for cell in cells] == expected


def test_the_readme_cross_distillation_table_quotes_its_reports():
    """Each row: all 6,000 pairs (students and teacher, mean ± std) and the folds 6-10 half, as the cross-distillation
    report it names combined them."""
    section = (ROOT / "README.md").read_text().split("| recipe (students combined) |")[1].split("\n\n")[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines()[2:]]
    assert len(rows) >= 4
    for _, students, folds_6_10, teacher, report in rows:
        combined = json.loads((ROOT / report.strip().strip("`") / "report.json").read_text())
        quoted = [
            (students, combined["student"]),
            (teacher, combined["teacher"]),
        ]
        for cell, result in quoted:
            assert cell.strip() == f"{100 * result['accuracy_mean']:.2f}% ± {100 * result['accuracy_std']:.2f}", report
        second_half = [fold["accuracy"] for fold in combined["student"]["per_fold"] if fold["fold"] > 5]
        assert folds_6_10.strip() == f"{100 * sum(second_half) / 5:.2f}%", report
