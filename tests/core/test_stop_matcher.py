"""StopMatcher (stop strings across token boundaries) and Tokenizer.token_bytes(), against a
plain Python oracle over the concatenated bytes."""

import random

import pytest

from ponder import _core
from ponder.models.loader import load_checkpoint
from ponder.tokenizer import Tokenizer

TEXTS = ["Hello world", "  leading spaces and\ttabs\n\nnew paragraphs", "3*7 = 21; 1234567",
         "naïve café — ünïcödé ✓ 🤖🙂", "The answer is 42.\n\nStep 2: 中文 ok", " ", "\n\n\n",
         "x" * 37 + " \u00a0\u200b\r\n"]


def expected_feeds(vocab, stops, ids):
    """Per token: the earliest start of a stop occurrence that ends in that token's bytes."""
    out, buf = [], b""
    for t in ids:
        prev = len(buf)
        buf += vocab[t]
        starts = [buf.find(s, max(0, prev - len(s) + 1)) for s in stops]
        starts = [i for i in starts if i >= 0]
        out.append(min(starts) if starts else -1)
    return out


def first_stop(vocab, stops, ids):
    """(token index, byte offset) where generation stops: the first prefix holding a stop."""
    for n in range(1, len(ids) + 1):
        text = b"".join(vocab[t] for t in ids[:n])
        found = [text.find(s) for s in stops if text.find(s) >= 0]
        if found:
            return n - 1, min(found)
    return None


def run(matcher, ids):
    state = _core.StopState()
    return [matcher.feed(state, t) for t in ids]


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    ck = load_checkpoint(smollm2_gguf)
    tok = Tokenizer(ck.tokenizer_json, ck.tokenizer_config, ck.generation_config)
    return tok, tok.token_bytes()


def split_encode(tok, text, rng, max_pieces=6):
    """text's ids with the text encoded in random pieces, so strings split across tokens in
    many ways (down to single bytes of a UTF-8 character)."""
    cuts = sorted(rng.sample(range(1, len(text)), min(max_pieces, len(text) - 1))) \
        if len(text) > 1 else []
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)], strict=True)]
    return [i for p in pieces for i in tok.encode(p, add_special_tokens=False)]


# --- token_bytes --------------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_byte_level_round_trip(smol, text):
    tok, vocab = smol
    ids = tok.encode(text, add_special_tokens=False)
    assert b"".join(vocab[i] for i in ids) == text.encode()


def test_token_bytes_byte_level_random_text(smol):
    tok, vocab = smol
    rng = random.Random(0)
    alphabet = "abc XYZ019\n\t.,;:!?'\"-—éüß中文🙂\u00a0"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        ids = split_encode(tok, text, rng)
        assert b"".join(vocab[i] for i in ids) == text.encode()


def test_token_bytes_every_token_decodes_alone(smol):
    tok, vocab = smol
    assert len(vocab) == tok.vocab_size
    for i in range(tok.vocab_size):
        text = tok.decode([i])
        if "\ufffd" not in text:  # a partial UTF-8 character decodes to U+FFFD
            assert vocab[i] == text.encode(), i


def test_token_bytes_special_tokens_are_skipped(smol):
    tok, vocab = smol
    assert vocab[tok.token_to_id("<|im_end|>")] == b""
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False)
    assert b"".join(vocab[i] for i in ids) == tok.decode(ids).encode() == b"user\nhi\n"


def sentencepiece_tokenizer(metaspace_decoder: bool) -> Tokenizer:
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    pieces = ["<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + list("\u2581abcdehlnorstwTA")
    merges = [("\u2581", "T"), ("h", "e"), ("\u2581T", "he"), ("\u2581", "a"), ("n", "s"),
              ("w", "e"), ("ns", "we"), ("\u2581a", "nswe"), ("\u2581answe", "r")]
    pieces += ["".join(m) for m in merges]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                                byte_fallback=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    if metaspace_decoder:
        hf.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    else:
        hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                        decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    hf.add_special_tokens([AddedToken("<unk>", special=True), AddedToken("</s>", special=True)])
    hf.add_tokens([AddedToken("<step>", special=False)])
    return Tokenizer(hf.to_str())


@pytest.mark.parametrize("metaspace_decoder", [False, True])
def test_token_bytes_sentencepiece(metaspace_decoder):
    tok = sentencepiece_tokenizer(metaspace_decoder)
    vocab = tok.token_bytes()
    assert vocab[tok.token_to_id("<0x0A>")] == (b"<0x0A>" if metaspace_decoder else b"\n")
    assert vocab[tok.token_to_id("\u2581answer")] == b" answer"
    assert vocab[tok.token_to_id("</s>")] == b""
    assert vocab[tok.token_to_id("<step>")] == b"<step>"
    rng = random.Random(1)
    texts = ["The answer is 42", "answer\n\nthe end", "héllo wörld 🙂 ✓", "a  b", "x<step>y"]
    texts += ["".join(rng.choice("The answr\nö🙂,") for _ in range(rng.randint(1, 30)))
              for _ in range(100)]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        if not metaspace_decoder:
            assert vocab[ids[0]] != b"" and tok.id_to_token(ids[0]) != "<unk>", text
        # The pre-tokenizer puts a "▁" first; decoding drops it again at the start of a text.
        joined = b"".join(vocab[i] for i in ids)
        if text[0] == " " or text.startswith("<step>"):
            continue  # leading-space handling of the decoder is not per token
        assert joined == b" " + tok.decode(ids).encode(), text
        if not metaspace_decoder:  # the Metaspace decoder leaves <0xAB> pieces as spelled
            assert joined == b" " + text.encode(), text


def test_token_bytes_unsupported_vocabulary():
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models

    hf = HFTokenizer(models.WordPiece(vocab={"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    hf.decoder = decoders.WordPiece()
    with pytest.raises(NotImplementedError, match="WordPiece"):
        Tokenizer(hf.to_str()).token_bytes()


# --- StopMatcher on small vocabularies ------------------------------------------------------
BYTES = [bytes([b]) for b in range(256)]


def ids_of(vocab, *pieces):
    return [vocab.index(p) for p in pieces]


def test_stop_split_across_tokens():
    vocab = BYTES + [b"The", b" ans", b"wer", b" is", b"\n", b"\n\nX"]
    m = _core.StopMatcher(vocab, [b"The answer is", b"\n\n"])
    ids = ids_of(vocab, b"The", b" ans", b"wer", b" is", b"\n", b"\n\nX")
    assert run(m, ids) == [-1, -1, -1, 0, -1, 13]
    assert run(m, ids) == expected_feeds(vocab, [b"The answer is", b"\n\n"], ids)


def test_earliest_start_wins():
    vocab = BYTES + [b"xabcd", b"abcd", b"bcd"]
    # Both end in one token; the one that ends later starts earlier.
    assert run(_core.StopMatcher(vocab, [b"bc", b"xabcd"]), ids_of(vocab, b"xabcd")) == [0]
    m = _core.StopMatcher(vocab, [b"abcd", b"bc"])
    assert run(m, ids_of(vocab, b"a", b"bcd")) == [-1, 0]
    assert run(m, ids_of(vocab, b"x", b"abcd")) == [-1, 1]


def test_overlapping_stops_and_matches_after_a_match():
    vocab = BYTES
    stops = [b"abab", b"bab", b"aba"]
    m = _core.StopMatcher(vocab, stops)
    ids = list(b"xababab")
    assert run(m, ids) == expected_feeds(vocab, stops, ids) == [-1, -1, -1, 1, 1, 3, 3]


def test_empty_tokens_and_num_bytes():
    vocab = [b"", b"a", b"bc"]
    m = _core.StopMatcher(vocab, [b"ab"])
    s = _core.StopState()
    assert [m.feed(s, t) for t in (1, 0, 0, 2, 0)] == [-1, -1, -1, 0, -1]
    assert s.num_bytes == 3
    s.reset()
    assert s.num_bytes == 0 and m.feed(s, 2) == -1


def test_random_against_oracle_small_alphabet():
    rng = random.Random(2)
    vocab = [b"a", b"b", b"c", b"ab", b"ba", b"abc", b"cab", b"", b"bb", b"cc"]
    for _ in range(300):
        stops = [bytes(rng.choice(b"abc") for _ in range(rng.randint(1, 5)))
                 for _ in range(rng.randint(1, 4))]
        m = _core.StopMatcher(vocab, stops)
        ids = [rng.randrange(len(vocab)) for _ in range(rng.randint(0, 40))]
        assert run(m, ids) == expected_feeds(vocab, stops, ids), (stops, ids)


# --- StopMatcher on SmolLM2's vocabulary ---------------------------------------------------
STOPS = [b"\n\n", b"The answer is", b"## Step", "café".encode()]


def test_smollm2_random_sequences(smol):
    tok, vocab = smol
    m = _core.StopMatcher(vocab, STOPS)
    assert m.vocab_size == len(vocab) and m.num_stops == len(STOPS) and m.max_stop_len == 13
    rng = random.Random(3)
    words = ["The", " answer", " is", "The answer is", "\n", "\n\n", "## Step 1", "café", "caf",
             "é", " x", "Answer", "is", " 42", "Th", "e an", "swer i", "s", "#", " ##", " Step"]
    hits = 0
    for _ in range(300):
        text = "".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        ids = split_encode(tok, text, rng)
        # sprinkle random tokens (specials included, which add no bytes)
        for _ in range(rng.randint(0, 3)):
            ids.insert(rng.randint(0, len(ids)), rng.randrange(len(vocab)))
        got = run(m, ids)
        assert got == expected_feeds(vocab, STOPS, ids), text
        first = first_stop(vocab, STOPS, ids)
        hit = [(i, off) for i, off in enumerate(got) if off >= 0]
        assert (hit[0] if hit else None) == first
        hits += first is not None
    assert hits > 100  # the test exercises matches, not only their absence


def test_smollm2_stop_split_in_2_and_3_tokens(smol):
    tok, vocab = smol
    m = _core.StopMatcher(vocab, STOPS)
    nl = tok.encode("\n", add_special_tokens=False)
    assert len(nl) == 1
    assert run(m, nl + nl) == [-1, 0]
    ids = [tok.encode(p, add_special_tokens=False) for p in ("So The", " ans", "wer is")]
    assert [len(p) for p in ids] == [2, 1, 2]
    assert run(m, [i for p in ids for i in p]) == [-1, -1, -1, -1, 3]
    # "é" as its two UTF-8 bytes, each its own byte-level token
    e1, e2 = ("é".encode()[:1], "é".encode()[1:])
    ids = tok.encode("caf", add_special_tokens=False) + [vocab.index(e1), vocab.index(e2)]
    assert run(m, ids)[-2:] == [-1, 0]


def test_states_are_independent_and_feed_many_matches_feed(smol):
    tok, vocab = smol
    m = _core.StopMatcher(vocab, STOPS)
    rng = random.Random(4)
    seqs = [split_encode(tok, t, rng) for t in
            ("So The answer is 7", "no stop here", "x\n\ny", "The answer is", "café\n\n")]
    want = [run(m, ids) for ids in seqs]
    states = [_core.StopState() for _ in seqs]
    got = [[] for _ in seqs]
    pos = [0] * len(seqs)
    while any(p < len(s) for p, s in zip(pos, seqs, strict=True)):
        live = [i for i, s in enumerate(seqs) if pos[i] < len(s)]
        rng.shuffle(live)
        live = live[:rng.randint(1, len(live))]
        out = m.feed_many([states[i] for i in live], [seqs[i][pos[i]] for i in live])
        for i, r in zip(live, out, strict=True):
            got[i].append(r)
            pos[i] += 1
    assert got == want


def test_state_copy_forks_a_sequence(smol):
    tok, vocab = smol
    m = _core.StopMatcher(vocab, STOPS)
    s = _core.StopState()
    for t in tok.encode("Then The answer", add_special_tokens=False):
        assert m.feed(s, t) == -1
    fork = s.copy()
    assert m.feed(s, tok.encode(" is", add_special_tokens=False)[0]) == 5
    assert m.feed(fork, tok.encode(" was", add_special_tokens=False)[0]) == -1
    assert fork.num_bytes == len(b"Then The answer was")


# --- bad input ------------------------------------------------------------------------------
def test_bad_input():
    vocab = [b"a", b"b"]
    with pytest.raises(ValueError, match="stops"):
        _core.StopMatcher(vocab, [])
    with pytest.raises(ValueError, match=r"stops\[1\]"):
        _core.StopMatcher(vocab, [b"a", b""])
    with pytest.raises(TypeError, match=r"stops\[0\]"):
        _core.StopMatcher(vocab, ["a"])
    with pytest.raises(TypeError, match=r"vocab\[1\]"):
        _core.StopMatcher([b"a", 3], [b"a"])
    with pytest.raises(TypeError, match="vocab"):
        _core.StopMatcher(b"ab", [b"a"])
    m = _core.StopMatcher(vocab, [b"ab"])
    s = _core.StopState()
    for bad in (-1, 2, 1 << 40):
        with pytest.raises(ValueError, match="token_id"):
            m.feed(s, bad)
    assert s.num_bytes == 0
    with pytest.raises(ValueError, match="length"):
        m.feed_many([s], [0, 1])
    with pytest.raises(ValueError, match=r"token_ids\[1\]"):
        m.feed_many([s, _core.StopState()], [0, 5])
    assert s.num_bytes == 0  # nothing moved
    with pytest.raises(TypeError, match=r"states\[0\]"):
        m.feed_many([object()], [0])
    # a state deep inside a larger matcher's automaton is refused, not read out of bounds
    big = _core.StopMatcher(vocab, [b"abababab"])
    s = _core.StopState()
    for t in (0, 1, 0, 1, 0):
        big.feed(s, t)
    with pytest.raises(ValueError, match="state"):
        m.feed(s, 0)
