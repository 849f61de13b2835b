"""Where WordNet comes from, for the operations that need it (synonyms), and the one NLTK fix it needs.

``ensure_wordnet()`` is called only by the operations that need WordNet:
it finds WordNet on NLTK's data path (a copy budgetq made earlier, or NLTK's own data such as
``nltk.download('wordnet')`` left), else copies it from ``WORDNET_DIR`` (default Debian's
``/usr/share/wordnet``), else raises ``WordNetUnavailable``. It never downloads: a worker without
internet would hang in ``nltk.download``, so the payloads skip the step with a note instead.

CI installs Debian's WordNet files: ``apt-get install -y --no-install-recommends wordnet-base``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from core.errors import PermanentError
from core.settings import current_settings

# Debian's wordnet-base puts the Princeton WordNet 3.0 database files here (WORDNET_DIR's default).
DEBIAN_WORDNET = Path("/usr/share/wordnet")
WORDNET_HELP = (
    "install Debian's wordnet-base (`apt-get install -y wordnet-base`), point WORDNET_DIR at a WordNet 3.0"
    " folder, or run `python -m nltk.downloader wordnet` on a machine with internet"
)


class WordNetUnavailable(PermanentError):
    """WordNet cannot be loaded on this worker; the steps that need it are skipped, not failed."""
_WORDNET_FILES = (
    "adj.exc", "adv.exc", "noun.exc", "verb.exc", "cntlist.rev",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "index.adj", "index.adv", "index.noun", "index.verb",
)
# The 45 lexicographer files of WordNet 3.0, in file-number order (lexnames(5WN)). Debian ships no
# `lexnames` file but NLTK's reader refuses to start without one, so we write it from this list.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# Function words: never substituted (WordNet alone would offer "Department of Energy" for "do").
_CLOSED_CLASS = frozenset(
    "a an the i me my mine you your yours he him his she her hers it its we us our ours they them "
    "their theirs this that these those what which who whom whose when where why how to of in on at "
    "by for with from up down out over under about into onto than then and or but if so not no nor "
    "is am are was were be been being do does did have has had can could will would shall should "
    "may might must please there here".split()
)
# WordNet's parts of speech as Penn tags; "s" is a satellite adjective.
_PENN = {"n": "NN", "v": "VB", "a": "JJ", "s": "JJ", "r": "RB"}

def allow_wordnet_30() -> None:
    """Let NLTK load a WordNet 3.0 database that ships no ``index.sense`` (Debian's). Idempotent.

    NLTK 3.10 maps every WordNet it loads onto "wordnet" 3.0 sense keys through ``index.sense``, even
    when the loaded database *is* 3.0, because it compares the version "3.0" with the package name
    "wordnet". For a 3.0 database the mapping is the identity, which the reader spells ``None``.
    Drop this once NLTK compares versions with versions.
    """
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    original = WordNetCorpusReader.map_wn
    if getattr(original, "_budgetq", False):
        return

    def map_wn(self, version="wordnet"):
        if version == "wordnet" and self.get_version() == "3.0":
            return None
        return original(self, version)

    map_wn._budgetq = True
    WordNetCorpusReader.map_wn = map_wn


def wordnet_pos_tag(token: str) -> str:
    """A Penn-style tag from the part of speech with the most WordNet senses: "DT" for a function word
    or a non-word (never substituted; WordNet alone would offer "iodine" for "I"), "UNK" when WordNet
    does not know the word."""
    from nltk.corpus import wordnet

    word = token.lower()
    if word in _CLOSED_CLASS or not word.isalpha():
        return "DT"
    counts: dict[str, int] = {}
    for synset in wordnet.synsets(word):
        tag = _PENN[synset.pos()]
        counts[tag] = counts.get(tag, 0) + 1
    return max(counts, key=counts.get) if counts else "UNK"


def nltk_data_dir() -> Path:
    """Where budgetq keeps its NLTK data: ``nltk_data`` in the download cache (``BUDGETQ_CACHE``)."""
    return current_settings().cache_dir / "nltk_data"


def ensure_wordnet(wordnet_dir: Optional[Path] = None) -> None:
    """Make WordNet loadable in this process, or raise ``WordNetUnavailable`` saying how to get it.

    ``wordnet_dir`` defaults to the ``WORDNET_DIR`` setting. Never downloads.
    """
    import nltk

    allow_wordnet_30()
    data_dir = nltk_data_dir()
    if str(data_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(data_dir))
    if _wordnet_loads():
        return
    source = Path(wordnet_dir) if wordnet_dir is not None else _configured_wordnet_dir()
    if not (source / "data.noun").is_file():
        raise WordNetUnavailable(f"WordNet is not available on this worker (none on NLTK's data path, none in WORDNET_DIR={source}); {WORDNET_HELP}")
    install_debian_wordnet(data_dir, source=source)
    if not _wordnet_loads():
        raise WordNetUnavailable(f"the WordNet in WORDNET_DIR={source} does not load with NLTK; {WORDNET_HELP}")


def _configured_wordnet_dir() -> Path:
    return current_settings().wordnet_dir


def _wordnet_loads() -> bool:
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
        return bool(wordnet.synsets("money"))
    except (LookupError, OSError):
        return False


def install_debian_wordnet(data_dir: Path, *, source: Path = DEBIAN_WORDNET) -> Path:
    """Copy a Debian-layout WordNet (``source``) into ``data_dir/corpora/wordnet`` and write its ``lexnames`` file."""
    target = data_dir / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for name in _WORDNET_FILES:
        # Copies, not symlinks: NLTK's path checks refuse links that leave its data folder.
        shutil.copyfile(source / name, target / name)
    lines = (f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))
    (target / "lexnames").write_text("".join(lines))
    return target
