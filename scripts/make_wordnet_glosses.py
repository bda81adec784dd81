"""Build the embedded WordNet subset: glosses labelled by lexicographer file, their synonym table, and the glosses of
the Fashion-MNIST class names (the embedded image-caption pairs use them).

Run: apt-get install wordnet-base && python scripts/make_wordnet_glosses.py [--train-per-class 200] [--test-per-class 40]

Per lexicographer file, up to `train_per_class` + `test_per_class` synsets are drawn with a fixed seed (files with
fewer synsets are split 80/20). The synonym table covers every word of the chosen glosses that WordNet lists
(other lemmas of its synsets, at most 8 per word). Written to ssl_train/data/embedded/wordnet_glosses.npz.
WordNet 3.0 (c) Princeton University, under the WordNet licence (ssl_train/data/embedded/LICENSE).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from ssl_train.data.text import EMBEDDED_GLOSSES, LEXNAMES, WORDNET_ROOT, parse_wordnet_glosses, synonym_table

# Fashion-MNIST class -> the WordNet noun whose first sense glosses it
CLASS_LEMMAS = {
    "T-shirt/top": "T-shirt",
    "Trouser": "trouser",
    "Pullover": "pullover",
    "Dress": "dress",
    "Coat": "coat",
    "Sandal": "sandal",
    "Shirt": "shirt",
    "Sneaker": "sneaker",
    "Bag": "bag",
    "Ankle boot": "boot",
}


def first_noun_gloss(root: Path, lemma: str) -> str:
    """The gloss (definition only, no examples) of the first noun sense of `lemma` in WordNet's index.noun."""
    key = lemma.lower().replace(" ", "_")
    with open(root / "index.noun", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if fields and fields[0] == key:
                offset = int(fields[-int(fields[2])])  # synset offsets close the line, most frequent sense first
                break
        else:
            raise SystemExit(f"{lemma!r} is not a WordNet noun")
    with open(root / "data.noun", "rb") as handle:
        handle.seek(offset)
        gloss = handle.readline().decode("utf-8").partition(" | ")[2]
    return re.sub(r"^\([^)]*\)\s*", "", gloss.split(";")[0].strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=WORDNET_ROOT)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=40)
    parser.add_argument("--out", default=str(EMBEDDED_GLOSSES))
    args = parser.parse_args()
    root = Path(args.root)
    glosses, lexfiles, lemmas = parse_wordnet_glosses(root)
    labels = np.asarray(lexfiles)
    rng = np.random.default_rng(0)
    train_idx, test_idx = [], []
    for label in range(len(LEXNAMES)):
        members = rng.permutation(np.flatnonzero(labels == label))
        want = args.train_per_class + args.test_per_class
        n_test = args.test_per_class if len(members) >= want else max(1, len(members) // 5)
        n_train = min(args.train_per_class, len(members) - n_test)
        test_idx += members[:n_test].tolist()
        train_idx += members[n_test : n_test + n_train].tolist()
    words = {w for i in train_idx + test_idx for w in re.findall(r"[a-z]+", glosses[i].lower())}
    table = synonym_table(lemmas)
    synonyms = {w: table[w][:8] for w in sorted(words) if w in table}
    captions = {name: first_noun_gloss(root, lemma) for name, lemma in CLASS_LEMMAS.items()}
    np.savez_compressed(
        args.out,
        train_text=np.array([glosses[i] for i in train_idx]),
        train_label=labels[train_idx].astype(np.int64),
        test_text=np.array([glosses[i] for i in test_idx]),
        test_label=labels[test_idx].astype(np.int64),
        synonyms_json=np.array(json.dumps(synonyms)),
        class_glosses_json=np.array(json.dumps(captions)),
    )
    print(
        f"{args.out}: {len(train_idx)} train / {len(test_idx)} test glosses, {len(synonyms)} words with synonyms; {Path(args.out).stat().st_size / 1e6:.2f} MB"
    )
    for name, gloss in captions.items():
        print(f"  {name}: {gloss}")


if __name__ == "__main__":
    main()
