"""Unit tier: the node label of a child process is its path of call links, cut at the front when too long."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aiida_mlmat.workflows.idempotent import MAX_LABEL, IdempotentLaunchMixin, _with_label

pytestmark = pytest.mark.unit


def label_of(parent: str, step: str) -> str:
    return IdempotentLaunchMixin.child_label(SimpleNamespace(node=SimpleNamespace(label=parent)), step)


def test_child_label_is_the_path_of_steps():
    assert label_of('', 'active_learning') == 'active_learning'
    assert label_of('cuau/active_learning', 'training_2') == 'cuau/active_learning/training_2'


def test_a_too_long_label_keeps_its_telling_end():
    text = label_of('x' * 300, 'training_2/member_1')
    assert len(text) == MAX_LABEL and text.startswith('…') and text.endswith('x/training_2/member_1')


def test_with_label_keeps_a_given_label_and_does_not_mutate_the_inputs():
    inputs = {'metadata': {'call_link_label': 'member_0'}, 'x': 1}
    _, new_inputs, _ = _with_label(object, inputs, {}, 'run/member_0')
    assert new_inputs['metadata'] == {'call_link_label': 'member_0', 'label': 'run/member_0'}
    assert inputs['metadata'] == {'call_link_label': 'member_0'}
    _, _, kwargs = _with_label(object, None, {'metadata': {'label': 'mine'}}, 'run/member_0')
    assert kwargs['metadata'] == {'label': 'mine'}
    _, _, kwargs = _with_label(object, None, {'metadata': {'call_link_label': 'a'}}, 'run/a')
    assert kwargs['metadata'] == {'call_link_label': 'a', 'label': 'run/a'}
