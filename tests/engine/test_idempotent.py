"""Engine tier: a workchain step that runs again (after a daemon restart) launches nothing twice.

The step here runs its launches twice in a row, the way a restarted workchain replays a step whose checkpoint
was never written; the production tier kills a real daemon at that moment (tests/production).
"""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ToContext, WorkChain, calcfunction, run_get_node

from aiida_mlmat.workflows.idempotent import IdempotentLaunchMixin

pytestmark = pytest.mark.engine


@calcfunction
def halves(value: orm.Int) -> dict[str, orm.Int]:
    return {'low': orm.Int(value.value // 2), 'high': orm.Int(value.value - value.value // 2)}


@calcfunction
def double(value: orm.Int) -> orm.Int:
    return orm.Int(2 * value.value)


class Child(WorkChain):
    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('x', valid_type=orm.Int)
        spec.output('y', valid_type=orm.Int)
        spec.outline(cls.go)

    def go(self):
        self.out('y', double(self.inputs.x))


class Replaying(IdempotentLaunchMixin, WorkChain):
    """Each launch made twice under one label, as a replayed step makes it; once without a label."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.outline(cls.launch, cls.finish)
        spec.output('total', valid_type=orm.Int)

    def launch(self):
        parts = [self.call_once('split', halves, orm.Int(7)) for _ in range(2)]
        assert parts[0]['low'].uuid == parts[1]['low'].uuid
        doubled = [self.call_once('double', double, parts[0]['high']) for _ in range(2)]
        assert doubled[0].uuid == doubled[1].uuid
        first = self.submit(Child, x=parts[0]['low'], metadata={'call_link_label': 'child_low'})
        again = self.submit(Child, x=parts[1]['low'], metadata={'call_link_label': 'child_low'})
        assert first.pk == again.pk
        unlabelled = [self.submit(Child, x=doubled[0]) for _ in range(2)]  # no label: nothing to match
        assert unlabelled[0].pk != unlabelled[1].pk
        return ToContext(low=again, other=unlabelled[0])

    def finish(self):
        self.out('total', orm.Int(self.ctx.low.outputs.y.value + self.ctx.other.outputs.y.value).store())


def test_replayed_launches_are_made_once(aiida_profile):
    result, node = run_get_node(Replaying)
    assert node.is_finished_ok, node.exit_message
    assert result['total'].value == 2 * 3 + 2 * 8
    called = node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()
    labels = sorted(link.link_label for link in called)
    assert labels == ['CALL', 'CALL', 'child_low', 'double', 'split']
