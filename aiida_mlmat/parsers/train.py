"""Parser ``mlmat.train``."""

from __future__ import annotations

import hashlib
from typing import Any

from aiida import orm
from aiida.engine import ExitCode

from aiida_mlmat.calcjobs.train import CHECKPOINT_FILE, MODEL_FILE
from aiida_mlmat.data.potential import PotentialData
from aiida_mlmat.parsers.base import MlmatParser


class TrainParser(MlmatParser):
    """Turn ``model.pt`` into a ``mlmat.potential`` node; keep the checkpoint whatever happened."""

    def parse(self, **kwargs: Any) -> ExitCode | None:
        """Parse the retrieved files."""
        checkpoint = self.temporary_file(kwargs, CHECKPOINT_FILE)
        if checkpoint is not None:
            self.out('checkpoint', orm.SinglefileData(str(checkpoint), filename=CHECKPOINT_FILE))
        results, exit_code = self.load_results()
        if results is None:
            return None if self.scheduler_killed() else (self.scheduler_message_exit_code() or exit_code)
        self.output_results({k: v for k, v in results.items() if k != 'traceback'})
        if results['status'] == 'error':
            return self.error_exit_code(results)
        model = self.temporary_file(kwargs, MODEL_FILE)
        if model is None:
            return self.exit_codes.ERROR_MISSING_OUTPUT.format(name=MODEL_FILE)
        content = model.read_bytes()
        if hashlib.sha256(content).hexdigest() != results.get('model_sha256'):
            return self.exit_codes.ERROR_CORRUPT_RESULTS.format(error='model.pt does not match its recorded sha256')
        import io

        import torch

        payload = torch.load(io.BytesIO(content), map_location='cpu', weights_only=True)
        node = PotentialData(
            [content],
            config=payload['config'],
            metrics={f'validation_{k}': v for k, v in results.get('validation', {}).items()},
            extra={
                'data_sha256': results.get('data_sha256'),
                'training': {
                    'epochs': results.get('epochs'),
                    'best_epoch': results.get('best_epoch'),
                    'stopped': results.get('stopped'),
                    'device': results.get('device'),
                    'seconds': results.get('seconds'),
                    'hyperparameters_sha256': results.get('hyperparameters_sha256'),
                    'hyperparameters': results.get('hyperparameters'),
                    'torch': results.get('torch'),
                },
                'versions': {**results.get('versions', {}), 'torch': results.get('torch')},
            },
        )
        if results['status'] == 'incomplete':
            return self.error_exit_code(results)  # the checkpoint is kept; the restart wrapper resumes
        self.out('potential', node)
        return ExitCode(0)
