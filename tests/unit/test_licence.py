"""Unit tier: the licence of an export is an SPDX licence expression (``aiida_mlmat.archive.check_licence``)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from aiida_mlmat.archive import ExportError, check_licence, deprecated_licence_hints
from aiida_mlmat.cli.main import cli

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ('given', 'canonical'),
    [
        ('CC-BY-4.0', 'CC-BY-4.0'),
        ('cc-by-4.0', 'CC-BY-4.0'),  # SPDX matches identifiers case-insensitively; stored as the list spells them
        ('CC0-1.0', 'CC0-1.0'),
        ('mit or apache-2.0', 'MIT OR Apache-2.0'),
        ('(MIT OR Apache-2.0) AND CC-BY-SA-4.0', '(MIT OR Apache-2.0) AND CC-BY-SA-4.0'),
        ('GPL-2.0-or-later WITH Classpath-exception-2.0', 'GPL-2.0-or-later WITH Classpath-exception-2.0'),
        ('LGPL-2.1+', 'LGPL-2.1+'),  # a deprecated identifier of the list, still valid in an expression
        ('LicenseRef-our-group-data-1.0', 'LicenseRef-our-group-data-1.0'),
        ('ODbL-1.0', 'ODbL-1.0'),
    ],
)
def test_spdx_expressions_are_accepted_and_spelt_as_the_list_does(given, canonical):
    assert check_licence(given) == canonical


@pytest.mark.parametrize(
    ('given', 'message'),
    [
        ('CC-BY4', r'`CC-BY4` is not a licence identifier of the SPDX list; did you mean CC-BY-4.0'),
        ('CC BY 4.0', r'`CC` is not a licence identifier of the SPDX list; did you mean CC-BY-4.0\?'),
        ('proprietary', r'`proprietary` is not a licence identifier .* LicenseRef-<name>'),
        ('MIT WITH no-such-exception', r'`no-such-exception` is not an exception identifier of the SPDX list(;|$)'),
        ('MIT AND', 'expected a licence identifier at the end'),
        ('AND MIT', 'expected a licence identifier before `AND`'),
        ('(MIT OR CC0-1.0', 'a parenthesis is not closed'),
        ('MIT)', 'unexpected `\\)`'),
        ('MIT CC0-1.0', 'unexpected `CC0-1.0`'),
        ('LicenseRef-ours+', r'`\+` \(or later\) applies to SPDX list identifiers only'),
        ('  ', 'must not be empty'),
        ('MIT\n#x', 'one line'),
    ],
)
def test_what_is_not_an_spdx_expression_is_refused_naming_the_place(given, message):
    with pytest.raises(ExportError, match=message):
        check_licence(given)


def test_export_refuses_a_bad_licence_before_it_loads_or_writes_anything(tmp_path):
    """Exit 2 with the suggestion, before the node is looked up (none exists here) and nothing written."""
    result = CliRunner().invoke(cli, ['export', '999999', str(tmp_path / 'out'), '--licence', 'CC-BY4', '--json'])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout.strip().splitlines()[-1])  # stdout's last line, as for every --json
    assert error['exit_code'] == 2 and 'did you mean CC-BY-4.0' in error['error']
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize(
    ('given', 'hints'),
    [
        ('MIT OR Apache-2.0', []),
        ('GPL-2.0', ['`GPL-2.0` is deprecated in the SPDX list; its current identifier is `GPL-2.0-only`']),
        (
            'lgpl-2.1+ AND MIT',
            ['`LGPL-2.1+` is deprecated in the SPDX list; its current identifier is `LGPL-2.1-or-later`'],
        ),
        (
            '(GPL-3.0 OR CC0-1.0)',
            ['`GPL-3.0` is deprecated in the SPDX list; its current identifier is `GPL-3.0-only`'],
        ),
        ('eCos-2.0', ['`eCos-2.0` is deprecated in the SPDX list (see https://spdx.org/licenses/eCos-2.0.html)']),
        ('GPL-2.0-or-later WITH Classpath-exception-2.0', []),
        ('LicenseRef-GPL-2.0', []),
    ],
)
def test_deprecated_identifiers_are_accepted_with_their_current_spelling_as_hint(given, hints):
    assert deprecated_licence_hints(check_licence(given)) == hints


def test_export_notes_a_deprecated_identifier_before_anything_else(tmp_path):
    """The note comes first (on stderr), then the command goes on: here to its error, as node 999999 does not exist."""
    result = CliRunner().invoke(cli, ['export', '999999', str(tmp_path / 'out'), '--licence', 'GPL-2.0+'])
    assert result.exit_code != 0
    assert result.stderr.splitlines()[0] == (
        'note: licence: `GPL-2.0+` is deprecated in the SPDX list; its current identifier is `GPL-2.0-or-later`'
    )
