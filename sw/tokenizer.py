"""SentencePiece tokenization for the joint English+German vocabulary.

Token ids of the model are given by a vocabulary (piece -> id). For models trained by lowbit the
vocabulary is the SentencePiece model's own (pad 0, unk 1, </s> 2); for imported MarianMT
checkpoints it is their ``vocab.json`` with separate source and target SentencePiece models.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from lowbit import LowbitError

from lowbit.io import atomic_file, write_bytes_atomic, write_text_atomic

PAD, UNK, EOS = "<pad>", "<unk>", "</s>"


def train_sentencepiece(sentences, out_path: Path, vocab_size: int = 8000, model_type: str = "unigram",
                        seed_sentences: int = 0) -> Path:
    """Train a SentencePiece model on ``sentences`` and write it atomically to ``out_path``.

    Ids: pad 0, unk 1, </s> 2, no <s> (decoding starts from pad, as in Marian). Full character
    coverage, so every character of the training text is in the vocabulary. Training uses one
    thread and a fixed input order, which makes the model reproducible.
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)), model_writer=buf, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, pad_id=0, unk_id=1, eos_id=2, bos_id=-1,
        pad_piece=PAD, unk_piece=UNK, eos_piece=EOS, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=0, minloglevel=2)
    out_path = Path(out_path)
    write_bytes_atomic(out_path, buf.getvalue())
    return out_path


class Tokenizer:
    """Text <-> ids through SentencePiece models and a piece vocabulary.

    Parameters
    ----------
    source_spm, target_spm : path of the SentencePiece models (the same file for a joint vocab).
    vocab : dict piece -> id, or None to use the source model's own ids (then source and target
        must be the same model).
    """

    def __init__(self, source_spm: Path, target_spm: Path | None = None, vocab: dict | None = None):
        import sentencepiece as spm

        target_spm = source_spm if target_spm is None else target_spm
        self.files = {"source": Path(source_spm), "target": Path(target_spm)}
        self.sp = {}
        for side, path in self.files.items():
            if not Path(path).is_file():
                state = "is not a file" if Path(path).exists() else "does not exist"
                raise LowbitError(f"SentencePiece model {path} {state}")
            sp = spm.SentencePieceProcessor()
            try:
                sp.load(str(path))
            except (OSError, RuntimeError) as e:
                raise LowbitError(f"cannot load SentencePiece model {path}: {e}") from None
            self.sp[side] = sp
        if vocab is None:
            sp = self.sp["source"]
            vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
            self.joint = True
        else:
            self.joint = False
        self.vocab = dict(vocab)
        self.pieces = {i: p for p, i in self.vocab.items()}
        for piece in (PAD, UNK, EOS):
            if piece not in self.vocab:
                raise LowbitError(f"tokenizer vocabulary has no {piece} piece")
        self.pad_id, self.unk_id, self.eos_id = self.vocab[PAD], self.vocab[UNK], self.vocab[EOS]

    def __len__(self) -> int:
        return max(self.vocab.values()) + 1

    def encode(self, text: str, side: str = "source", add_eos: bool = True) -> list[int]:
        """Ids of ``text`` (unknown pieces -> unk), followed by </s> when ``add_eos``."""
        pieces = self.sp[side].encode(text, out_type=str)
        ids = [self.vocab.get(p, self.unk_id) for p in pieces]
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids, side: str = "target") -> str:
        """Detokenized text of ``ids``; pad and </s> are dropped, unk is rendered as ' ⁇ '."""
        pieces = []
        for i in ids:
            i = int(i)
            if i in (self.pad_id, self.eos_id):
                continue
            pieces.append(self.pieces.get(i, UNK))
        return self.sp[side].decode_pieces(pieces)

    def save(self, directory: Path) -> None:
        """Write the tokenizer files into a checkpoint ``directory``."""
        directory = Path(directory)
        if self.joint:
            _copy_atomic(self.files["source"], directory / "spm.model")
        else:
            _copy_atomic(self.files["source"], directory / "source.spm")
            _copy_atomic(self.files["target"], directory / "target.spm")
            write_text_atomic(directory / "vocab.json", json.dumps(self.vocab, ensure_ascii=False, indent=1))

    @classmethod
    def from_dir(cls, directory: Path) -> "Tokenizer":
        """Load ``spm.model`` (joint) or ``source.spm`` + ``target.spm`` + ``vocab.json`` (Marian)."""
        directory = Path(directory)
        if (directory / "spm.model").is_file():
            return cls(directory / "spm.model")
        if (directory / "source.spm").is_file() and (directory / "vocab.json").is_file():
            return cls.from_marian_files(directory)
        raise LowbitError(f"no tokenizer in {directory}: expected spm.model, or source.spm + "
                          f"target.spm + vocab.json")

    @classmethod
    def from_marian_files(cls, directory: Path) -> "Tokenizer":
        """Load Marian's ``source.spm`` + ``target.spm`` (optional) + ``vocab.json``.

        ``vocab.json`` must map pieces to non-negative integer ids; anything else
        raises :class:`LowbitError` naming the file.
        """
        directory = Path(directory)
        path = directory / "vocab.json"
        try:
            vocab = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LowbitError(f"cannot read {path}: {e}") from None
        if (not isinstance(vocab, dict) or not vocab
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                           for i in vocab.values())):
            raise LowbitError(f"{path} must map pieces to non-negative integer ids")
        target = directory / "target.spm"
        return cls(directory / "source.spm", target if target.is_file() else None, vocab)


def _copy_atomic(src: Path, dst: Path) -> None:
    if Path(src).resolve() == Path(dst).resolve():
        return
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)
