"""CharTokenizer, with the course's API: one id per character, id 0 for '<UNK>' (characters it has not seen)."""

from __future__ import annotations

from typing import Iterable, Optional, Union

UNKNOWN = "<UNK>"


class CharTokenizer:
    """`CharTokenizer(list_of_characters)` or `CharTokenizer.from_text(text)`; `build_vocab(corpus)` rebuilds the
    vocabulary from a text or a list of texts, in sorted order after '<UNK>' (id 0).

    >>> tokenizer = CharTokenizer.from_text("hello")
    >>> tokenizer.encode("hole!"), tokenizer.decode(tokenizer.encode("hole"))
    ([2, 4, 3, 1, 0], 'hole')
    """

    def __init__(self, vocab: Optional[Iterable[str]] = None):
        self._set_vocab(list(vocab or []))

    @classmethod
    def from_text(cls, text: Union[str, Iterable[str]]) -> "CharTokenizer":
        tokenizer = cls()
        tokenizer.build_vocab(text)
        return tokenizer

    def _set_vocab(self, characters: list) -> None:
        self.vocab = [UNKNOWN] + [character for character in characters if character != UNKNOWN]
        self.vocab_size = len(self.vocab)
        self.char_to_id = {character: index for index, character in enumerate(self.vocab)}
        self.id_to_char = dict(enumerate(self.vocab))
        self.unk_id = 0

    def build_vocab(self, corpus: Union[str, Iterable[str]]) -> None:
        """The sorted distinct characters of a text (or of every text of a list) become the vocabulary."""
        texts = [corpus] if isinstance(corpus, str) else list(corpus)
        self._set_vocab(sorted(set().union(*texts)))

    def encode(self, text: str) -> list:
        return [self.char_to_id.get(character, self.unk_id) for character in text]

    def decode(self, tokens) -> str:
        """Characters of the ids (a list, an array or a 1-D Tensor); an id outside the vocabulary reads '<UNK>'."""
        tokens = getattr(tokens, "data", tokens)
        return "".join(self.id_to_char.get(int(token), UNKNOWN) for token in tokens)
