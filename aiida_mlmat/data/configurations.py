"""Data plugin ``mlmat.configurations``: a set of (labelled or unlabelled) configurations.

The configurations are one extxyz file in the node's repository, readable by ASE, MACE, nequip and any tool
outside AiiDA. Summary attributes make sets queryable: count, species, formulas, label keys, calculator and
its parameters, units, composition range and the sha256 of the file. Configurations that failed to be
labelled are not dropped silently: they are listed in the ``excluded`` attribute with their reasons.
"""

from __future__ import annotations

import codecs
import copy
import hashlib
import io
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from aiida import orm
from ase import Atoms

from aiida_mlmat.common.constants import INDEX_KEY, LABEL_KEYS, UNITS
from aiida_mlmat.worker.structures import (
    InvalidConfigurationError,
    check_configuration,
    check_labels,
    extxyz_string,
)


class CorruptFileError(ValueError):
    """A file that cannot be read as a configuration set."""


class FrameSummary(NamedTuple):
    """What a set's summary attributes need of one configuration (the configuration itself is not kept)."""

    n_atoms: int
    formula: str
    counts: dict[str, int]
    labels: frozenset[str]
    numbered: bool
    periodic: bool
    index: int | None = None


def _index_of(frame: Atoms) -> int | None:
    """The index a configuration records (``info['mlmat_index']``) as an integer, or ``None``."""
    try:
        return int(frame.info[INDEX_KEY])
    except (KeyError, TypeError, ValueError):
        return None


def frame_summary(frame: Atoms) -> FrameSummary:
    """The :class:`FrameSummary` of one configuration: its atom count, formula, atoms per element, the labels its
    calculator results carry (of ``LABEL_KEYS``), whether it records its index (``info['mlmat_index']``), whether
    it is periodic in all three directions, and the index it records (``None`` for none)."""
    counts: dict[str, int] = {}
    for symbol in frame.get_chemical_symbols():
        counts[symbol] = counts.get(symbol, 0) + 1
    results = frame.calc.results if frame.calc is not None else {}
    labels = frozenset(key for key in LABEL_KEYS if key in results)
    return FrameSummary(
        len(frame),
        frame.get_chemical_formula(),
        counts,
        labels,
        INDEX_KEY in frame.info,
        bool(frame.pbc.all()),
        _index_of(frame),
    )


def _iread_bytes(content: bytes) -> Iterator[Atoms]:
    """The frames of extxyz bytes one at a time (none for blank bytes). Lines end at ``\n`` alone, as when ASE reads
    a file, and the text is decoded as it is read, never copied whole (not ``io.StringIO``: once read from, it holds
    the text at 4 bytes a character)."""
    from ase.io import iread

    if not content.strip():
        return iter(())
    return iread(io.TextIOWrapper(io.BytesIO(content), encoding='utf-8', newline='\n'), index=':', format='extxyz')


def _frame_bytes(content: bytes, span: tuple[int, int]) -> bytes:
    """The bytes of the frame at ``span`` of ``content`` (see :func:`frame_spans`), ending with a newline."""
    start, end = span
    return content[start:end] if content[end - 1 : end] == b'\n' else content[start:end] + b'\n'


def _span_summaries(
    content: bytes, spans: Sequence[tuple[int, int]], positions: set[int]
) -> dict[int, FrameSummary] | None:
    """The :class:`FrameSummary` of the frames at ``positions`` of ``spans`` (see :func:`frame_spans`), each read
    from its own bytes; ``None`` when one of them is not exactly one configuration to ASE (then the layout is not
    what the spans say, and the set is copied by parsing and writing it)."""
    out = {}
    for position in sorted(positions):
        if not 0 <= position < len(spans):
            return None
        frames = list(_iread_bytes(_frame_bytes(content, spans[position])))
        if len(frames) != 1:
            return None
        out[position] = frame_summary(frames[0])
    return out


def _written(frames: Sequence[Atoms]) -> bytes:
    """The extxyz bytes of ``frames``; ``ValueError`` naming the configuration whose label is given twice (in its
    calculator's results and in ``info`` or ``arrays``), which ASE's writer refuses with a bare ``KeyError``."""
    if not frames:
        return b''
    try:
        return extxyz_string(frames).encode('utf-8')
    except KeyError as exc:
        for position, frame in enumerate(frames):
            try:
                extxyz_string([frame])
            except KeyError:
                raise ValueError(
                    f'configuration {position} ({frame.get_chemical_formula()}): a label both in its calculator '
                    f'results and in `info` or `arrays` ({exc}); keep one of them'
                ) from exc
        raise


def _labels_outside_calculator(frame: Atoms) -> bool:
    """Whether ``frame`` holds a label outside its calculator (``info['energy']``, ``info['stress']``,
    ``arrays['forces']``, as older readers and hand-made frames keep them): written to extxyz, ASE reads it back as a
    label."""
    return 'energy' in frame.info or 'stress' in frame.info or 'forces' in frame.arrays


def _checked_summaries(content: bytes) -> list[FrameSummary]:
    """The :class:`FrameSummary` of every frame of ``content`` as ASE reads it, its labels checked as the constructor
    checks them (``ValueError`` naming the configuration)."""
    summaries = []
    for position, frame in enumerate(_iread_bytes(content)):
        try:
            check_labels(frame, limits=False)
        except InvalidConfigurationError as exc:
            raise ValueError(f'configuration {position} ({frame.get_chemical_formula()}): {exc}') from exc
        summaries.append(frame_summary(frame))
    return summaries


def scan_extxyz_bytes(content: bytes) -> list[FrameSummary]:
    """The :class:`FrameSummary` of every frame of extxyz bytes, reading one frame at a time (a set's frames are
    never all in memory at once: as ASE objects they take several times the file's size)."""
    return [frame_summary(frame) for frame in _iread_bytes(content)]


def frame_spans(content: bytes) -> list[tuple[int, int]] | None:
    """The byte range ``(start, end)`` of every frame of extxyz bytes (its count line, comment line, atom lines and
    any ``VEC`` lines after them, as ASE reads them), from the layout alone; ``None`` when the layout is not that of a
    plain extxyz file (then frames cannot be copied by their bytes, and are copied by parsing and writing them)."""
    spans = []
    position, size = 0, len(content)
    while position < size:
        end = content.find(b'\n', position)
        line = content[position : end if end >= 0 else size]
        if not line.strip():
            if content[position:].strip():
                return None
            break
        try:
            count = int(line.strip())
        except ValueError:
            return None
        start = position
        for _ in range(count + 2):
            if position >= size:
                return None
            end = content.find(b'\n', position)
            position = size if end < 0 else end + 1
        while position < size and content[position : position + 16].lstrip().startswith(b'VEC'):
            end = content.find(b'\n', position)
            position = size if end < 0 else end + 1
        spans.append((start, position))
    return spans


def _numbered(frame: bytes, index: int) -> bytes | None:
    """``frame`` (one frame's bytes) with ``mlmat_index=<index>`` put first on its comment line (where no quote can be
    open, as one can at a line's end in a file another code wrote), or ``None`` where ASE would not read it there:
    the line is no extxyz key-value line (it names no ``Properties``), or the frame has ``VEC`` lines."""
    first = frame.index(b'\n') + 1
    second = frame.find(b'\n', first)
    if b'Properties=' not in frame[first : len(frame) if second < 0 else second]:
        return None
    if re.search(rb'\n[ \t]*VEC', frame[first:]):
        return None  # with VEC lines ASE keeps the comment line as text: it would not read the index
    return frame[:first] + f'{INDEX_KEY}={int(index)} '.encode() + frame[first:]


def _summary_attributes(summaries: Sequence[FrameSummary]) -> dict[str, Any]:
    """``count``, ``num_atoms_total``, ``species``, ``formulas``, ``label_keys`` (the labels every configuration
    carries) and ``composition_range`` (per element, the smallest and largest fraction of a configuration's atoms)."""
    species = sorted({symbol for summary in summaries for symbol in summary.counts})
    ranges: dict[str, list[float]] = {}
    for symbol in species:
        fractions = [summary.counts.get(symbol, 0) / summary.n_atoms for summary in summaries if summary.n_atoms]
        ranges[symbol] = [min(fractions), max(fractions)]
    return {
        'count': len(summaries),
        'num_atoms_total': int(sum(summary.n_atoms for summary in summaries)),
        'species': species,
        'formulas': [summary.formula for summary in summaries],
        'label_keys': [key for key in LABEL_KEYS if summaries and all(key in summary.labels for summary in summaries)],
        'composition_range': ranges,
    }


def _merged_summary_attributes(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The :func:`_summary_attributes` of two sets' configurations one after the other, from those of each set
    (neither is read again): what scanning the joined file would give."""
    sides = [side for side in (first, second) if side['count']]
    if len(sides) < 2:
        return copy.deepcopy(sides[0] if sides else second)
    species = sorted({*first['species'], *second['species']})
    ranges = {}
    for symbol in species:  # a side whose frames hold no atom has no fractions (as in _summary_attributes)
        bounds = [side['composition_range'].get(symbol, [0.0, 0.0]) for side in sides if side['num_atoms_total']]
        ranges[symbol] = [min(low for low, _ in bounds), max(high for _, high in bounds)]
    return {
        'count': first['count'] + second['count'],
        'num_atoms_total': first['num_atoms_total'] + second['num_atoms_total'],
        'species': species,
        'formulas': [*first['formulas'], *second['formulas']],
        'label_keys': [key for key in LABEL_KEYS if key in first['label_keys'] and key in second['label_keys']],
        'composition_range': ranges,
    }


def partial_label_error(frames: Sequence[Atoms] | Sequence[FrameSummary], name: str = 'file') -> str | None:
    """Why ``frames`` cannot be stored as one set: a label that some configurations carry and others lack.

    A set's ``label_keys`` are the labels every configuration carries, and training fits a label on every
    configuration or on none (its loss has no mask for missing ones), so such a label would be dropped without a
    word. Energy and forces are refused when partial. Stress only counts on periodic configurations: a cluster or a
    slab has none, and a set that mixes them with bulk is stored without the ``stress`` label key.

    :return: the message naming the label, the first configuration (counted from 0) without it and how many carry
        it; ``None`` when every label is on all or none of the configurations that can have it.
    """
    summaries = [frame if isinstance(frame, FrameSummary) else frame_summary(frame) for frame in frames]
    for key in LABEL_KEYS:
        concerned = [
            (position, summary) for position, summary in enumerate(summaries) if key != 'stress' or summary.periodic
        ]
        carrying = [key in summary.labels for _, summary in concerned]
        if any(carrying) and not all(carrying):
            first = next(position for (position, _), has in zip(concerned, carrying, strict=True) if not has)
            what = 'periodic configurations' if key == 'stress' else 'configurations'
            return (
                f'{name}: only {sum(carrying)} of the {len(concerned)} {what} carry `{key}`; configuration {first} '
                f'is the first without it. A set is labelled with `{key}` on every configuration or on none: '
                f'label the rest, or remove `{key}` from every configuration to store the set without it'
            )
    return None


def _unreadable_frame(text: str) -> str:
    """``', configuration N, line L'``: where ``text`` stops being readable extxyz (frames counted from 0), or ``''``.

    First the layout (an atom-count line, a comment line, that many atom lines of at least four fields, per frame),
    since ASE checks every frame's count line before it returns any frame; then, for a file laid out right, the
    first frame ASE cannot read (an unknown element, a malformed comment or value).
    """
    from ase.io import iread

    lines = text.split('\n')  # as ASE reads: a line ends at \n alone, not at \r or \x0b inside a value
    if lines and not lines[-1]:
        lines.pop()
    start = position = 0
    while start < len(lines):
        if not lines[start].strip():
            if any(line.strip() for line in lines[start:]):
                return f', configuration {position}, line {start + 1} (blank where its atom count should be)'
            break
        try:
            count = int(lines[start].strip())
        except ValueError:
            return f', configuration {position}, line {start + 1} (expected its atom count, got {lines[start][:40]!r})'
        atom_lines = lines[start + 2 : start + 2 + count]
        for offset, line in enumerate(atom_lines):
            if len(line.split()) < 4:
                return f', configuration {position}, line {start + 3 + offset} (an atom line with too few fields)'
        if len(atom_lines) < count:
            return f', configuration {position} (cut off: {len(atom_lines)} of its {count} atom lines)'
        start += count + 2
        while start < len(lines) and lines[start].lstrip().startswith('VEC'):
            start += 1
        position += 1
    position = 0
    try:
        for _ in iread(io.StringIO(text), index=':', format='extxyz'):
            position += 1
    except Exception:
        return f', configuration {position}'
    return ''


def _check_utf8(content: bytes, name: str, chunk: int = 1 << 20) -> None:
    """Refuse bytes that are not UTF-8 text, decoding a MiB at a time (the whole text is never built: it would take up
    to 4 bytes a character).

    :raises CorruptFileError: naming the first byte that is not UTF-8 text.
    """
    decoder = codecs.getincrementaldecoder('utf-8')()
    view = memoryview(content)
    for start in range(0, len(content), chunk):
        carried = len(decoder.getstate()[0])  # the bytes of a character the last chunk cut in two
        try:
            decoder.decode(view[start : start + chunk], final=start + chunk >= len(content))
        except UnicodeDecodeError as exc:
            where = start - carried + exc.start
            raise CorruptFileError(f'{name} is not a text extxyz file: {exc.reason} at byte {where}') from exc


def checked_frames(content: bytes, name: str = 'file', validate: bool = True) -> Iterator[Atoms]:
    """The frames of extxyz bytes, one at a time, with a clear error for anything unreadable or unphysical.

    A file is refused while it is iterated, possibly after frames were given: store nothing before the last one.

    :raises CorruptFileError: when the bytes are not a valid extxyz file, hold no frame, ASE would
        read only part of them (a blank line between frames), or (with ``validate``) a frame is unphysical (no
        atoms, unknown element, atoms closer than 0.5 Å) or its labels are unusable (non-finite, or forces or
        stress of the wrong shape).
    """
    _check_utf8(content, name)
    if not content.strip():
        raise CorruptFileError(f'{name} holds no configuration (empty file)')
    frames = _iread_bytes(content)
    count = 0
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            break
        except Exception as exc:
            where = _unreadable_frame(content.decode('utf-8'))
            unknown = isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str)  # ASE's symbol lookup
            reason = f'unknown element {exc.args[0]!r}' if unknown else f'{type(exc).__name__}: {exc}'
            raise CorruptFileError(f'{name}{where}: cannot be read as extxyz: {reason}') from exc
        if validate:
            try:
                check_configuration(frame)
                check_labels(frame)
            except InvalidConfigurationError as exc:
                raise CorruptFileError(f'{name}, configuration {count}: {exc}') from exc
        count += 1
        yield frame
    if not count:
        where = _unreadable_frame(content.decode('utf-8'))  # a blank first line, say
        raise CorruptFileError(f'{name}{where}: holds no configuration' if where else f'{name} holds no configuration')
    spans = frame_spans(content) if validate else None
    if validate and (spans is None or len(spans) != count):  # ASE stops at a blank line, say, without a word
        where = _unreadable_frame(content.decode('utf-8')) or f', after configuration {count - 1}'
        raise CorruptFileError(
            f'{name}{where}: ASE reads only the first {count} configuration(s) of the file; '
            'mend the file (a blank line between frames, say) so that every configuration is read'
        )


def parse_extxyz_bytes(content: bytes, name: str = 'file', validate: bool = True) -> list[Atoms]:
    """Parse extxyz bytes into frames, with a clear error for anything unreadable or unphysical (every frame in
    memory at once; :func:`checked_frames` gives them one at a time).

    :raises CorruptFileError: as :func:`checked_frames`.
    """
    return list(checked_frames(content, name, validate))


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number (or bool, str) it holds; anything else as it is."""
    import numpy as np

    return value.item() if isinstance(value, np.generic) else value


class ConfigurationSetData(orm.Data):
    """A set of atomic configurations stored as one extxyz file plus queryable summary attributes.

    Energies are in eV, forces in eV/Å, stresses in eV/Å^3 (ASE's sign convention, Voigt order), lengths in Å.
    """

    FILENAME = 'configurations.extxyz'

    def __init__(
        self,
        frames: Sequence[Atoms] | None = None,
        *,
        content: bytes | None = None,
        calculator: dict[str, Any] | None = None,
        excluded: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        """Build a set from ASE frames or from extxyz bytes.

        :param frames: configurations; labels are taken from their calculators' results, and refused
            (``ValueError`` naming the configuration) where not finite or of the wrong shape.
        :param content: extxyz bytes, stored exactly as given (use :meth:`from_file` for files).
        :param calculator: ``{'name': ..., 'parameters': {...}}`` of the calculator that made the labels.
        :param excluded: records ``{'index', 'formula', 'reason'}`` of configurations that failed.
        """
        # from_file or subsets: the summaries of ``content``'s frames, made there already; extended: their attributes
        summaries = kwargs.pop('_summaries', None)
        attributes = kwargs.pop('_attributes', None)
        super().__init__(**kwargs)
        if frames is None and content is None:
            raise ValueError('give either `frames` or `content`')
        if content is None:
            frames = list(frames or [])
            for position, frame in enumerate(frames):
                try:
                    check_labels(frame, limits=False)
                except InvalidConfigurationError as exc:
                    raise ValueError(f'configuration {position} ({frame.get_chemical_formula()}): {exc}') from exc
            content = _written(frames)
            if any(_labels_outside_calculator(frame) for frame in frames):
                summaries = _checked_summaries(content)  # ASE reads those back as labels: check and count them
            else:
                summaries = [frame_summary(frame) for frame in frames]
        elif summaries is None and attributes is None:
            summaries = scan_extxyz_bytes(content)
        self._set_content(content, attributes if attributes is not None else _summary_attributes(list(summaries)))
        self.base.attributes.set('calculator', dict(calculator) if calculator else None)
        excluded_list = [dict(record) for record in (excluded or [])]
        self.base.attributes.set('excluded', excluded_list)
        self.base.attributes.set('n_excluded', len(excluded_list))

    def _set_content(self, content: bytes, attributes: dict[str, Any]) -> None:
        self.base.repository.put_object_from_bytes(content, self.FILENAME)
        self.base.attributes.set_many(
            {
                **attributes,
                'units': dict(UNITS),
                'sha256': hashlib.sha256(content).hexdigest(),
                'filename': self.FILENAME,
            }
        )

    @classmethod
    def from_file(cls, path: str | pathlib.Path, validate: bool = True, **kwargs: Any) -> ConfigurationSetData:
        """Read an extxyz file; refuse (``CorruptFileError``) one that is unreadable, empty or unphysical.

        With ``validate``, a file whose configurations carry a label only in part (forces on some, not on others)
        is refused too (see :func:`partial_label_error`): the set would silently lose that label.
        """
        path = pathlib.Path(path)
        content = path.read_bytes()
        # read and checked once, a frame at a time: a large file is never in memory as ASE objects
        summaries = [frame_summary(frame) for frame in checked_frames(content, name=path.name, validate=validate)]
        if validate:
            error = partial_label_error(summaries, path.name)
            if error:
                raise CorruptFileError(error)
        return cls(content=content, _summaries=summaries, **kwargs)

    @property
    def count(self) -> int:
        """Number of configurations."""
        return self.base.attributes.get('count')

    def __len__(self) -> int:
        return self.count

    @property
    def species(self) -> list[str]:
        """Sorted chemical symbols present."""
        return list(self.base.attributes.get('species'))

    @property
    def label_keys(self) -> list[str]:
        """Labels every configuration carries (``energy``, ``forces``, ``stress``)."""
        return list(self.base.attributes.get('label_keys'))

    @property
    def calculator(self) -> dict[str, Any] | None:
        """The calculator spec that made the labels, if any."""
        return self.base.attributes.get('calculator')

    @property
    def excluded(self) -> list[dict[str, Any]]:
        """Records of configurations that failed, with their reasons."""
        return list(self.base.attributes.get('excluded'))

    @property
    def sha256(self) -> str:
        """sha256 of the extxyz file."""
        return self.base.attributes.get('sha256')

    def get_content(self) -> bytes:
        """Return the extxyz bytes."""
        return self.base.repository.get_object_content(self.FILENAME, mode='rb')

    def get_atoms(self) -> list[Atoms]:
        """Return the configurations as ASE atoms (labels attached as a SinglePointCalculator).

        Scalar ``info`` values are plain Python numbers (ASE's extxyz reader gives numpy scalars), so
        ``json.dumps`` takes them; an array value stays a numpy array, as ASE reads it (a list would be written back
        as ``_JSON [...]``, changing the bytes of a set made from these frames).
        """
        content = self.get_content()
        frames = parse_extxyz_bytes(content, validate=False) if content.strip() else []
        for frame in frames:
            frame.info = {key: _plain(value) for key, value in frame.info.items()}
        return frames

    def get_frame(self, index: int) -> Atoms:
        """Configuration ``index`` (from 0) as :meth:`get_atoms` gives it, parsing only that frame of the file.

        :raises IndexError: for an index outside the set.
        """
        if not 0 <= int(index) < self.count:
            raise IndexError(f'configuration {index} is outside the set of {self.count} (0 to {self.count - 1})')
        from ase.io import read

        text = io.TextIOWrapper(io.BytesIO(self.get_content()), encoding='utf-8', newline='\n')
        frame = read(text, index=int(index), format='extxyz')
        frame.info = {key: _plain(value) for key, value in frame.info.items()}
        return frame

    def subsets(
        self,
        groups: Sequence[Sequence[int]],
        *,
        numbered: bool = False,
        calculator: dict[str, Any] | None = None,
    ) -> list[ConfigurationSetData]:
        """New (unstored) sets of this set's configurations: one per group of positions (from 0; in the order given,
        repeats allowed), for splits, samples and selections.

        The frames are copied byte for byte from this set's file (what ASE reads from them is what it reads from
        this set), and this set is read one frame at a time, never whole as ASE objects (they take several times
        the file's size). A file whose layout is not plain extxyz is copied by parsing and writing it.

        :param numbered: each frame keeps its index in this set as ``info['mlmat_index']``, or gets it.
        :param calculator: the new sets' ``calculator`` attribute.
        :raises IndexError: for a position outside the set.
        """
        count = self.count  # once: an attribute read of a stored node loads all of them (a formula per frame)
        groups = [[int(position) for position in group] for group in groups]
        for group in groups:
            for position in group:
                if not 0 <= position < count:
                    raise IndexError(f'configuration {position} is outside the set of {count}')
        content = self.get_content()
        spans = frame_spans(content)
        # only the chosen frames are read: a small selection from a large set does not read the rest
        summaries = _span_summaries(content, spans, {p for group in groups for p in group}) if spans else None

        def copy(position: int) -> bytes | None:
            frame = _frame_bytes(content, spans[position])
            return _numbered(frame, position) if numbered and not summaries[position].numbered else frame

        by_bytes = summaries is not None and len(spans) == count
        copies = {position: copy(position) for position in summaries} if by_bytes else {}
        if not by_bytes or None in copies.values():  # a frame whose comment line takes no index: parse and write
            frames = self.get_atoms()
            if numbered:
                for position, frame in enumerate(frames):
                    frame.info.setdefault(INDEX_KEY, position)
            return [type(self)([frames[position] for position in group], calculator=calculator) for group in groups]
        out = []
        for group in groups:
            chosen = [summaries[position] for position in group]
            if numbered:
                chosen = [
                    summary if summary.numbered else summary._replace(numbered=True, index=position)
                    for position, summary in zip(group, chosen, strict=True)
                ]
            data = b''.join(copies[position] for position in group)  # type: ignore[misc]
            out.append(type(self)(content=data, calculator=calculator, _summaries=chosen))
        return out

    def iter_atoms(self) -> Iterator[Atoms]:
        """The configurations one at a time, as :meth:`get_atoms` gives them, never all in memory at once."""
        for frame in _iread_bytes(self.get_content()):
            frame.info = {key: _plain(value) for key, value in frame.info.items()}
            yield frame

    def extended(
        self,
        frames: Sequence[Atoms],
        *,
        calculator: dict[str, Any] | None = None,
        excluded: Sequence[dict[str, Any]] | None = None,
    ) -> ConfigurationSetData:
        """A new (unstored) set of this set's configurations, copied byte for byte and read one at a time, followed by
        ``frames`` (refused as the constructor refuses them: ``ValueError`` naming the configuration)."""
        addition = type(self)(frames)  # checks the frames' labels, writes and summarises them
        content = self.get_content()
        content = content.rstrip() + b'\n' if content.strip() else b''
        spans = frame_spans(content)
        if spans is None or len(spans) != self.count:  # not plain extxyz: parsed and written anew
            return type(self)(self.get_atoms() + list(frames), calculator=calculator, excluded=excluded)
        names = ('count', 'num_atoms_total', 'species', 'formulas', 'label_keys', 'composition_range')
        attributes = _merged_summary_attributes(
            {name: self.base.attributes.get(name) for name in names},
            {name: addition.base.attributes.get(name) for name in names},
        )  # this set's own summary is kept: its frames are copied, not read again
        return type(self)(
            content=content + addition.get_content(), calculator=calculator, excluded=excluded, _attributes=attributes
        )

    @classmethod
    def joined(
        cls,
        parts: Sequence[ConfigurationSetData],
        *,
        calculator: dict[str, Any] | None = None,
        excluded: Sequence[dict[str, Any]] | None = None,
    ) -> ConfigurationSetData:
        """A new (unstored) set of every configuration of ``parts``, sorted by the index each records
        (``info['mlmat_index']``; 0 where none; ties keep their order), as labelled chunks are collected.

        The frames are copied byte for byte, and each part is read one frame at a time, never whole as ASE objects;
        parts whose layout is not plain extxyz are parsed and written anew. Labels are refused as the constructor
        refuses them, and so are an index that is not an integer and a part in which ASE reads no configuration
        (``ValueError`` naming the part and the configuration).
        """
        pieces: list[tuple[int, int, bytes, FrameSummary]] = []
        for number, part in enumerate(parts):
            content = part.get_content()
            if not content.strip():
                continue
            spans = frame_spans(content)
            summaries = []
            for position, frame in enumerate(_iread_bytes(content)):
                try:
                    check_labels(frame, limits=False)
                except InvalidConfigurationError as exc:
                    formula = frame.get_chemical_formula()
                    raise ValueError(f'part {number}, configuration {position} ({formula}): {exc}') from exc
                summary = frame_summary(frame)
                if summary.numbered and summary.index is None:
                    value = frame.info[INDEX_KEY]
                    raise ValueError(
                        f'part {number}, configuration {position}: {INDEX_KEY}={value!r} is not an integer'
                    )
                summaries.append(summary)
            if not summaries:
                raise ValueError(f'part {number} holds {len(content)} bytes but no configuration ASE can read')
            if spans is None or len(spans) != len(summaries):  # not plain extxyz: parsed and written anew
                frames = [frame for part in parts for frame in part.iter_atoms()]
                frames.sort(key=lambda frame: _index_of(frame) or 0)
                return cls(frames, calculator=calculator, excluded=excluded)
            for span, summary in zip(spans, summaries, strict=True):
                pieces.append((summary.index or 0, len(pieces), _frame_bytes(content, span), summary))
        pieces.sort(key=lambda piece: piece[:2])
        return cls(
            content=b''.join(piece[2] for piece in pieces),
            calculator=calculator,
            excluded=excluded,
            _summaries=[piece[3] for piece in pieces],
        )

    def write_extxyz(self, path: str | pathlib.Path) -> None:
        """Write the configurations to an extxyz file (byte for byte what is stored)."""
        pathlib.Path(path).write_bytes(self.get_content())

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary of the set (for ``mlmat dataset show``)."""
        attributes = self.base.attributes
        return {
            'pk': self.pk,
            'uuid': self.uuid,
            'label': self.label,
            'n_configurations': attributes.get('count'),
            'n_atoms_total': attributes.get('num_atoms_total'),
            'species': attributes.get('species'),
            'label_keys': attributes.get('label_keys'),
            'calculator': attributes.get('calculator'),
            'composition_range': attributes.get('composition_range'),
            'n_excluded': attributes.get('n_excluded'),
            'excluded': attributes.get('excluded'),
            'units': attributes.get('units'),
            'sha256': attributes.get('sha256'),
        }
