"""Answer-level quality: the shipped data, answer normalisation, agreement on token lists, the formula,
floors, and a real measurement of the tiny decoder (agent.llm.evaluate) with cached reference outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ConfigError, ManifestError
from agent.llm import quality as Q
from agent.zoo.floors import unfit_reason
from agent.zoo.manifest import Quality


def test_the_shipped_sets_are_big_enough_and_well_formed():
    prompts, questions = Q.load_prompts(), Q.load_questions()
    assert len(prompts) >= 50 and len(questions) >= 100
    assert len({p.id for p in prompts}) == len(prompts) and len({q.id for q in questions}) == len(questions)
    for q in questions:   # an answer that the question already says would be free
        assert not any(Q.answer_correct(q.question, [a]) for a in q.answers), q


@pytest.mark.parametrize("text, norm", [
    ("The capital of France is Paris.", "capital of france is paris"),
    ("L'Étoile, la Cité", "l etoile la cite"),
    ("  An   apple, a DAY!  ", "apple day"),
    ("H2O (water)", "h2o water"),
    ("It is -18.0°C, or 5,000 m. Done.", "it is 18.0 c or 5,000 m done"),
])
def test_normalise_lowercases_strips_accents_punctuation_and_articles(text, norm):
    assert Q.normalise(text) == norm


@pytest.mark.parametrize("reply, answers, ok", [
    ("The capital of France is Paris.", ["Paris"], True),
    ("paris", ["Paris"], True),
    ("It is Buenos   Aires, of course", ["Buenos Aires"], True),
    ("Seven times eight is 56.", ["56", "fifty-six"], True),
    ("fifty six", ["fifty-six"], True),
    ("In 1956 it happened", ["56"], False),           # whole words only
    ("The freezing point is -18.0 degrees", ["0"], False),   # a decimal is one word
    ("It is 100.", ["100"], True),
    ("Parisian food is great", ["Paris"], False),
    ("L'Étoile, la Marseillaise", ["Paris"], False),
    ("Da Vinci painted it", ["Leonardo da Vinci", "da Vinci"], True),
    ("", ["Paris"], False),
])
def test_an_answer_is_right_when_an_accepted_answer_occurs_as_whole_words(reply, answers, ok):
    assert Q.answer_correct(reply, answers) is ok


def test_exact_match_is_the_share_of_right_replies():
    qs = [Q.Question("a", "Capital of France?", ("Paris",)), Q.Question("b", "2+2?", ("4", "four"))]
    assert Q.exact_match(["Paris!", "five"], qs) == 0.5
    assert Q.exact_match(["It is Paris", "Four."], qs) == 1.0
    with pytest.raises(ValueError):
        Q.exact_match(["Paris"], qs)


def test_padding_marks_an_end_of_turn_but_not_a_cut():
    assert Q.padded([5, 6], True, 4) == [5, 6, Q.END, Q.END]
    assert Q.padded([5, 6], False, 4) == [5, 6]
    assert Q.padded([1, 2, 3, 4, 5], False, 4) == [1, 2, 3, 4]


def test_agreement_counts_full_matches_and_mean_common_prefix():
    n = 4
    ref = [[1, 2, 3, 4], [1, 2, 3, 4], Q.padded([7], True, n), [9, 9, 9, 9]]
    var = [[1, 2, 3, 4], [1, 2, 0, 4], Q.padded([7], True, n), Q.padded([9, 9], True, n)]
    share, prefix = Q.agreement(ref, var, n)
    assert share == 2 / 4                      # identical, and both ended after the same token
    assert prefix == (4 + 2 + 4 + 2) / 4       # the early end of the last one diverges at token 3
    assert Q.agreement([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 6]], 4) == (1.0, 4.0)   # only the first n count
    with pytest.raises(ValueError):
        Q.agreement([[1]], [], n)


def test_quality_rel_is_the_mean_of_agreement_and_capped_relative_exact_match():
    assert Q.quality_rel(1.0, 0.4, 0.4) == 1.0
    assert Q.quality_rel(0.8, 0.3, 0.4) == pytest.approx((0.8 + 0.75) / 2)
    assert Q.quality_rel(0.9, 0.5, 0.4) == pytest.approx((0.9 + 1.0) / 2)   # never better than the reference
    assert Q.em_rel(0.0, 0.0) == 1.0


def test_unfit_reason_names_each_failed_figure_with_its_value_and_floor():
    q = Quality("answers", 0.84, 0.84, agreement=0.82, mean_prefix=28.5, exact_match=0.3, exact_match_rel=0.9)
    assert unfit_reason({}, q) is None
    assert unfit_reason({"agreement": 0.8, "exact_match_rel": 0.9}, q) is None   # a floor is inclusive
    assert unfit_reason({"agreement": 0.9}, q) == "agreement 0.82 < floor 0.9"
    assert unfit_reason({"quality_rel": 0.9, "agreement": 0.9}, q) == \
        "agreement 0.82 < floor 0.9; quality_rel 0.84 < floor 0.9"
    assert unfit_reason({"perplexity_rel": 0.95}, q) == "perplexity_rel not measured (floor 0.95)"
    assert unfit_reason({"agreement": 0.5}, None) == "agreement not measured (floor 0.5)"


def _write(p: Path, lines: list[str]) -> Path:
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.mark.parametrize("lines, where", [
    (['{"id": "p1", "messages": [{"role": "user", "content": "hi"}]}', "{not json"], ":2: "),
    (['{"id": "p1", "messages": [{"role": "user", "content": "hi"}]}',
      '{"id": "p1", "messages": [{"role": "user", "content": "ho"}]}'], ":2: id: duplicate id 'p1'"),
    (['{"id": "p1", "messages": []}'], ":1: messages: expected a non-empty list"),
    (['{"id": "p1", "messages": [{"role": "robot", "content": "hi"}]}'], ":1: messages[0]: expected"),
    (['{"id": "p1", "messages": [{"role": "user", "content": "hi"}], "extra": 1}'], ":1: extra: unknown key"),
    (['["p1"]'], ":1: expected a JSON object, got list"),
    (['{"id": "p1", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'],
     ":1: messages: expected the last message to be the user's"),
    ([""], ": expected at least one line"),
])
def test_malformed_prompt_files_name_the_file_line_and_key(tmp_path, lines, where):
    p = _write(tmp_path / "prompts.jsonl", lines)
    with pytest.raises(ConfigError) as e:
        Q.load_prompts(p)
    assert str(e.value).startswith(str(p)) and where in str(e.value)


@pytest.mark.parametrize("lines, where", [
    (['{"id": "q1", "question": "", "answers": ["x"]}'], ":1: question: expected a non-empty string"),
    (['{"id": "q1", "question": "Why?", "answers": "because"}'], ":1: answers: expected a non-empty list"),
    (['{"id": "q1", "question": "Why?", "answers": ["?!"]}'], ":1: answers: expected an answer with letters"),
    (['{"question": "Why?", "answers": ["x"]}'], ":1: id: expected a non-empty string"),
])
def test_malformed_question_files_name_the_file_line_and_key(tmp_path, lines, where):
    p = _write(tmp_path / "questions.jsonl", lines)
    with pytest.raises(ConfigError) as e:
        Q.load_questions(p)
    assert where in str(e.value)


def test_a_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the data file"):
        Q.load_questions(tmp_path / "nope.jsonl")


def test_the_manifest_keeps_every_figure_and_the_unfit_reason(tmp_path):
    from dataclasses import replace

    from agent.zoo.manifest import Manifest, TensorSpec, Variant, load_manifest, save_manifest

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.onnx").write_bytes(b"x")
    (folder / "b.onnx").write_bytes(b"y")
    q = Quality("answers", 0.85, 0.85, perplexity=10.2, perplexity_rel=0.99, agreement=0.8, mean_prefix=27.5,
                exact_match=0.3, exact_match_rel=0.9)
    spec = (TensorSpec("x", "float32", (1,)),)
    m = Manifest("m", "tensor", "a", spec, spec,
                 (Variant("a", "a.onnx", "fp32"),
                  Variant("b", "b.onnx", "int8", quality=q, unfit="agreement 0.8 < 0.9")),
                 folder)
    save_manifest(m)
    back = load_manifest(folder)
    assert back.variant("b").quality == q and back.variant("b").unfit == "agreement 0.8 < 0.9"
    assert back.variant("a").unfit is None and back.variant("a").quality is None
    save_manifest(replace(m, variants=(m.variants[0], replace(m.variants[1], unfit=" "))))
    with pytest.raises(ManifestError, match=r"manifest.toml:\d+: .*unfit: expected the reason"):
        load_manifest(folder)


def _request(tiny_build: dict[str, Path], tmp_path: Path, model: str, reference: str | None) -> dict:
    prompts = _write(tmp_path / "p.jsonl", [json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": t}]})
                                            for i, t in enumerate(["hello", "the fox", "one two"])])
    questions = _write(tmp_path / "q.jsonl", [json.dumps({"id": "q1", "question": "What jumps?", "answers": ["fox"]}),
                                              json.dumps({"id": "q2", "question": "Hi?", "answers": ["hello"]})])
    return {"model": str(tiny_build[model]), "tokenizer": str(tiny_build["tokenizer"]),
            "llm": json.loads(tiny_build["llm"].read_text()), "reference": str(tiny_build[reference]) if reference
            else None, "threads": 1, "text": str(tmp_path / "t.txt"), "tokens": 64, "window": 32,
            "prompt": "hello", "decode_tokens": 4, "prompts": str(prompts), "questions": str(questions),
            "agreement_tokens": 6, "answer_tokens": 5}


def test_evaluate_measures_agreement_and_exact_match_and_caches_the_reference_outputs(tiny_build, tmp_path):
    from agent.llm.evaluate import outputs_path, run

    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog " * 20)
    ref_cache = outputs_path(tiny_build["fp32"])
    ref_cache.unlink(missing_ok=True)
    outputs_path(tiny_build["int4"]).unlink(missing_ok=True)
    same = run(_request(tiny_build, tmp_path, "fp32", "fp32"))      # the reference against itself
    assert same["agreement"] == 1.0 and same["mean_prefix"] == 6 and same["exact_match"] == same["exact_match_ref"]
    assert same["prompts"] == 3 and same["questions"] == 2 and ref_cache.is_file()
    r4 = run(_request(tiny_build, tmp_path, "int4", "fp32"))
    assert r4["reference_outputs_cached"] is True and r4["own_outputs_cached"] is False
    assert 0 <= r4["agreement"] <= 1 and 0 <= r4["mean_prefix"] <= 6
    # the figures are what the pure functions give on the stored outputs
    mine = json.loads(outputs_path(tiny_build["int4"]).read_text())
    ref = json.loads(ref_cache.read_text())
    assert (r4["agreement"], r4["mean_prefix"]) == Q.agreement(ref["sequences"], mine["sequences"], 6)
    again = run(_request(tiny_build, tmp_path, "int4", "fp32"))   # re-measuring re-scores the same outputs
    assert again["own_outputs_cached"] is True and again["agreement"] == r4["agreement"]
    # changing the data makes both caches stale: the outputs are generated again
    req = _request(tiny_build, tmp_path, "int4", "fp32")
    req["agreement_tokens"] = 5
    r5 = run(req)
    assert r5["reference_outputs_cached"] is False and r5["own_outputs_cached"] is False
