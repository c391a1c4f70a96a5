"""The report's account of what "held out" means for this run: the document splits, how much of each held-out
split the training splits contain (`prep`'s ``data/contamination.json``), and the teacher-forced likelihood of the
true next token on the test positions. A reader must be able to check that a held-out number is not recall."""

from __future__ import annotations

from rpt.rundir import read_json

BUCKETS = ("easy", "medium", "hard")


def _pct(part: int, whole: int) -> str:
    return f"{part} of {whole} ({100 * part / whole:.1f}%)" if whole else f"{part} of 0"


def contamination_section(rd) -> str:
    path = rd.data / "contamination.json"
    if not path.exists():
        return ("_This run's data was prepared before `prep` measured held-out overlap: its held-out documents are "
                "held out by id only._\n")
    report = read_json(path)
    n = report["ngram"]
    lines = [f"Held out by content: each held-out document against the {report['training_documents']} training "
             f"documents (pretraining and RPT-train), by word {n}-grams (GPT-3's and lm-evaluation-harness's "
             f"decontamination rule: contaminated = any shared {n}-gram, or an exact duplicate). "
             + ("Contaminated held-out documents were dropped (`data.decontaminate=true`)." if report["decontaminate"]
                else "Nothing was dropped (`data.decontaminate=false`)."), "",
             "| split | documents | contaminated | exact duplicates | near duplicates | mean n-gram overlap "
             "| dropped |",
             "|---|---|---|---|---|---|---|"]
    for name, s in report["splits"].items():
        mean = "–" if s["mean_ngram_overlap"] is None else f"{100 * s['mean_ngram_overlap']:.2f}%"
        lines.append(f"| {name} | {s['heldout_documents']} | {_pct(s['contaminated'], s['heldout_documents'])} | "
                     f"{s['exact_duplicates']} | {s['near_duplicates']} | {mean} | {s['dropped']} |")
    lengths = _lengths(report)
    lines += ["", "Held-out lines found verbatim in a training split, by the line's length in words (for a corpus of "
              "one item per line, e.g. the demo's problems: 5 words = a 2-term sum, 7 = 3 terms, 9 = 4 terms):", "",
              "| split | " + " | ".join(f"{k} words" for k in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for name, s in report["splits"].items():
        cells = [s["lines_by_words"].get(k) for k in lengths]
        lines.append(f"| {name} | " + " | ".join(_pct(c["in_training"], c["lines"]) if c else "–" for c in cells)
                     + " |")
    return "\n".join(lines) + "\n"


def _lengths(report: dict) -> list[str]:
    keys = {k for s in report["splits"].values() for k in s["lines_by_words"]}
    return sorted(keys, key=lambda k: int(k.rstrip("+")))


def likelihood_table(nt: dict) -> str:
    """Mean log-probability and mean probability of the true next token, teacher-forced, per checkpoint."""
    rows = nt.get("likelihood") or {}
    if not rows:
        return ""
    lines = ["Teacher-forced likelihood of the true next token (no reasoning): mean log-probability (nats) and mean "
             "probability, per bucket.", "", "| model | " + " | ".join(BUCKETS) + " |", "|---|---|---|---|"]
    for label, buckets in rows.items():
        cells = ["–" if buckets[b]["mean_logp"] is None else
                 f"{buckets[b]['mean_logp']:.3f} / p {buckets[b]['mean_p']:.3f} (n={buckets[b]['n']})"
                 for b in BUCKETS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
