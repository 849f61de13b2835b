"""CLINC150 (Larson et al., EMNLP 2019): a local folder offline, else the published files, cached.

Offline, ``CLINC150_DIR`` (default ``../shared/data/clinc150`` beside the repository) holds
``<variant>/<split>.jsonl``. Online, the oos-eval files are downloaded from a URL pinned to one commit,
checked against a sha256 and converted into that same layout under the cache.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

from core.errors import PermanentError, RetryableError
from core.settings import Settings, current_settings

COMMIT = "828f8093932c8fe6ca7936c3d2e52903b1c523de"
BASE_URL = f"https://raw.githubusercontent.com/clinc/oos-eval/{COMMIT}/data"
VARIANTS = {"full": "data_full.json", "small": "data_small.json", "imbalanced": "data_imbalanced.json"}
SOURCE_SPLITS = ("train", "val", "test", "oos_train", "oos_val", "oos_test")
REPO_ROOT = Path(__file__).resolve().parents[2]

# sha256 of each file at COMMIT. Empty on purpose: this code was written on a machine without
# internet, so the real digests could not be computed, and a made-up constant would be worse than
# none. Until someone fills these in from a trusted download, the first download pins its digest
# (trust on first use) in the cache's SHA256SUMS, keyed by this commit-pinned URL, and every later
# use verifies against it. Since the URL names a commit, the bytes should never change.
KNOWN_SHA256: dict[str, str] = {}


def clinc150_folder(variant: str, settings: Settings | None = None) -> Path:
    """The folder of ``<split>.jsonl`` files for ``variant``: local if present, else downloaded.

    ``settings`` (default: this process's) name the local folder (``CLINC150_DIR``) and the cache."""
    if variant not in VARIANTS:
        raise PermanentError(f"clinc150: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    settings = settings or current_settings()
    local = Path(settings.clinc150_dir or REPO_ROOT.parent / "shared" / "data" / "clinc150")
    if (local / variant).is_dir():
        return local / variant
    return _download_variant(variant, settings.cache_dir / "clinc150" / COMMIT)


def _download_variant(variant: str, cache: Path) -> Path:
    target = cache / variant
    if (target / "test.jsonl").is_file():
        return target
    data = json.loads(fetch_verified(f"{BASE_URL}/{VARIANTS[variant]}", cache))
    domains = json.loads(fetch_verified(f"{BASE_URL}/domains.json", cache))
    write_jsonl_layout(data, domains, target)
    return target


def fetch_verified(url: str, cache: Path) -> bytes:
    """Download ``url`` once into ``cache`` and check its sha256 (pinned in source or on first use)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / url.rsplit("/", 1)[1]
    if not path.is_file():
        _download(url, path)
    body = path.read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    expected = KNOWN_SHA256.get(url) or _pinned(cache).get(url)
    if expected is None:
        _pin(cache, url, digest)
    elif digest != expected:
        raise PermanentError(f"{path}: sha256 {digest} does not match the pinned {expected} for {url}")
    return body


def _download(url: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            body = response.read()
    except (urllib.error.URLError, TimeoutError) as exc:
        # Network trouble is worth another attempt; offline users set CLINC150_DIR instead.
        raise RetryableError(f"clinc150: cannot download {url} ({exc}); offline, set CLINC150_DIR") from None
    partial = path.with_suffix(".part")
    partial.write_bytes(body)
    partial.replace(path)


def _pinned(cache: Path) -> dict[str, str]:
    sums = cache / "SHA256SUMS"
    if not sums.is_file():
        return {}
    pairs = (line.split(maxsplit=1) for line in sums.read_text().splitlines() if line.strip())
    return {url: digest for digest, url in pairs}


def _pin(cache: Path, url: str, digest: str) -> None:
    with (cache / "SHA256SUMS").open("a") as sums:
        sums.write(f"{digest} {url}\n")


def write_jsonl_layout(data: dict, domains: dict[str, list[str]], target: Path) -> None:
    """Convert oos-eval's ``{split: [[text, intent], ...]}`` into ``<split>.jsonl`` rows with a domain."""
    domain_of = {intent: domain for domain, intents in domains.items() for intent in intents}
    target.mkdir(parents=True, exist_ok=True)
    for split in SOURCE_SPLITS:
        lines = (
            json.dumps({"text": text, "label": intent, "domain": domain_of.get(intent, "oos")})
            for text, intent in data[split]
        )
        partial = target / f"{split}.jsonl.part"
        partial.write_text("\n".join(lines) + "\n")
        partial.replace(target / f"{split}.jsonl")
