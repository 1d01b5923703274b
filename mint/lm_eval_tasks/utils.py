"""Documents of the vendored WikiText-2 raw test for lm-eval, split as the hub's document-level copy.

EleutherAI/wikitext_document_level cuts the raw split into articles at each top-level heading
(" = Title = "); a document is the heading and every raw line up to the next heading, newlines kept.
The detokenizer and the metrics are lm-eval's own (lm_eval/tasks/wikitext/preprocess_wikitext.py).
"""

from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer  # noqa: F401

from mint.data import load_text


def is_article_heading(line):
    return line.startswith(" = ") and line.rstrip("\n").endswith(" = ") and not line.startswith(" = =")


def split_documents(text):
    """Raw WikiText text -> list of articles (the text before the first heading is dropped)."""
    docs, current = [], None
    for line in text.splitlines(keepends=True):
        if is_article_heading(line):
            if current is not None:
                docs.append("".join(current))
            current = []
        if current is not None:
            current.append(line)
    if current:
        docs.append("".join(current))
    return docs


def load_documents(**kwargs):
    """lm-eval `custom_dataset`: {"test": Dataset with a "page" column}, built locally."""
    import datasets

    return {"test": datasets.Dataset.from_dict({"page": split_documents(load_text("wikitext2-test"))})}
