import pytest
from aiida import orm
from aiida_mlmat.workflows.reference import ReferenceWorkChain

def test_smoke(submit_and_await, worker_code, emt):
    b = ReferenceWorkChain.get_builder_from_protocol(worker_code, calculator=emt, elements=['Cu','Au'], overrides={'chunk_size': 40})
    node = submit_and_await(b, timeout=300)
    from aiida.cmdline.utils.common import get_workchain_report
    print(get_workchain_report(node, 'REPORT'))
    assert node.is_finished_ok, node.exit_message
    print(node.outputs.configurations.summary())
