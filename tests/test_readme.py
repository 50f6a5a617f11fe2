"""The README (the front page) and docs/ (a walk per role, a page per part) agree: the README's table of
documentation pages is what the pages say, and every link between them lands on a file and a section
that exist. ``scripts/readme.py --check`` is the check; these tests run it on the repository and on
copies broken on purpose."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_script", REPO / "scripts" / "readme.py")
readme = importlib.util.module_from_spec(_spec)
sys.modules["readme_script"] = readme  # dataclasses look their module up there
_spec.loader.exec_module(readme)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The README and docs/ of the repository, copied where a test may break them."""
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    return tmp_path


def test_the_readme_and_docs_agree():
    assert readme.check(REPO) == []


def test_the_check_command_exits_0_on_the_repository_and_1_naming_the_problem_when_they_disagree(copy):
    ok = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "readme.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    page = copy / "docs" / "data-scientist.md"
    page.write_text(page.read_text().replace("# Data scientists:", "# Scientists:", 1))
    script = copy / "scripts" / "readme.py"
    script.parent.mkdir()
    shutil.copy(REPO / "scripts" / "readme.py", script)
    bad = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 1
    assert "table of documentation pages is not what docs/*.md say" in bad.stderr


def test_a_new_docs_page_not_in_the_readme_fails_the_check(copy):
    (copy / "docs" / "spec-reference.md").write_text("# Spec reference\n\n## model.yaml\n")
    problems = readme.check(copy)
    assert problems and "not what docs/*.md say" in problems[0]
    (copy / "README.md").write_text(readme.render((copy / "README.md").read_text(), copy))
    assert readme.check(copy) == []
    assert (
        "[Spec reference](docs/spec-reference.md) | reference | [model.yaml](docs/spec-reference.md#modelyaml)"
        in (copy / "README.md").read_text()
    )


def test_a_renamed_section_breaks_the_links_to_it_and_the_check_names_each_one(copy):
    page = copy / "docs" / "release.md"
    page.write_text(page.read_text().replace("### How a merge reaches production", "### From merge to production"))
    (copy / "README.md").write_text(readme.render((copy / "README.md").read_text(), copy))
    problems = readme.check(copy)
    assert problems, "a link to the old section name must be reported"
    assert all("has no section #how-a-merge-reaches-production" in p for p in problems)
    assert any(p.startswith("docs/data-scientist.md:") for p in problems)


def test_a_link_to_a_missing_page_is_reported_with_its_file_and_line(copy):
    (copy / "docs" / "extra.md").write_text("# Extra\n\nsee [the old page](eks.md) and [code](`x`)\n")
    (copy / "README.md").write_text(readme.render((copy / "README.md").read_text(), copy))
    assert readme.check(copy) == ["docs/extra.md:3: link to eks.md: eks.md does not exist"]


@pytest.mark.parametrize(
    "heading, anchor",
    [
        ("`make demo`: what you are watching", "make-demo-what-you-are-watching"),
        ("Versions `V<tag>.<manual>.<auto>`", "versions-vtagmanualauto"),
        ("Predictor (`kfrelease.serving.predictor`)", "predictor-kfreleaseservingpredictor"),
        ("Access policy: one source of truth", "access-policy-one-source-of-truth"),
    ],
)
def test_anchors_are_githubs(heading, anchor):
    assert readme.slug(heading) == anchor


def test_headings_inside_code_blocks_are_not_sections_and_repeated_ones_are_numbered():
    text = "# Title\n\n```bash\n# a comment, not a heading\n```\n\n## Steps\n\n## Steps\n"
    assert [h.anchor for h in readme.headings(text)] == ["title", "steps", "steps-1"]


def test_the_readme_benchmark_section_is_the_results_and_their_notes():
    """`python -m bench <area>` rewrites the section from bench/results: a note written only into the README (the
    demo's "why the goal is missed") was lost by the next bench run; it lives in <area>.notes.md now."""
    from bench.__main__ import END, README, START, readme_section

    text = README.read_text()
    assert text.split(START, 1)[1].split(END, 1)[0].strip() == readme_section().strip()
    assert "Why the goal is missed" in readme_section()
