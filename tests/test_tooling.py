"""What other tools read: the pre-commit hook's default `files:`, the editor modelines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent


def hook_pattern() -> re.Pattern[str]:
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    return re.compile(hook["files"])  # pre-commit applies it with re.search


@pytest.mark.parametrize(
    "path",
    [
        "jobs/nightly.yaml",
        "jobs/a/b/report.yml",
        "jobs/argv.json",
        "jobs/UPPER.YAML",
        "deploy/jobs/x.Yml",
        "examples/jobs/ci-steps.yaml",
        "ops/backup.job.yaml",
        "ops/batch.jobs.json",
    ],
)
def test_the_default_files_pattern_takes_job_specs(path: str) -> None:
    assert hook_pattern().search(path)


@pytest.mark.parametrize(
    "path",
    [
        ".pre-commit-config.yaml",
        ".github/workflows/ci.yml",
        "compose.yaml",
        "schemas/job.schema.json",
        "package.json",
        "myjobs/x.yaml",
        "jobs/readme.md",
        "jobs.yaml.bak",
    ],
)
def test_the_default_files_pattern_leaves_other_files_alone(path: str) -> None:
    assert not hook_pattern().search(path)


def test_every_example_spec_matches_the_default_pattern() -> None:
    specs = [p for p in (ROOT / "examples" / "jobs").iterdir() if p.suffix in (".yaml", ".json")]
    assert specs
    for spec in specs:
        assert hook_pattern().search(spec.relative_to(ROOT).as_posix()), spec


MODELINE = "# yaml-language-server: $schema=../../schemas/job-file.schema.json"


def test_every_document_of_the_example_files_carries_the_editor_modeline() -> None:
    # yaml-language-server reads the modeline per document: one at the top covers only
    # the first document of a file (issue 15).
    for spec in (ROOT / "examples" / "jobs").glob("*.yaml"):
        documents = re.split(r"^---\s*$", spec.read_text(), flags=re.MULTILINE)
        for number, document in enumerate(documents, 1):
            comments = [line for line in document.strip().splitlines() if line.startswith("#")]
            assert MODELINE in comments, f"{spec.name}: document {number}"
