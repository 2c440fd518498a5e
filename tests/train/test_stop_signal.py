"""A stop signal sent to a worker's whole process group (as torchrun and SLURM send it) sets the
worker's stop flag and leaves megatron's checkpoint-writer helper process working. In a child
process of its own session, since it signals its whole process group."""

from __future__ import annotations

import subprocess
import sys
import textwrap

WORKER = textwrap.dedent("""
    import os, signal, time

    from csmoe_megatron.train.stop_signal import StopSignal, shield_checkpoint_writer


    def main():
        stop = StopSignal()
        shield_checkpoint_writer()
        from megatron.core.dist_checkpointing.strategies import filesystem_async

        queue = filesystem_async._get_write_results_queue()  # what a save uses
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            os.killpg(0, sig)
        time.sleep(1.0)  # a killed helper would be gone by now
        queue.put("written")
        print("flag", stop.received, "queue", queue.get(timeout=30), flush=True)


    if __name__ == "__main__":
        main()
""")


def test_group_signal_sets_the_flag_and_spares_the_checkpoint_writer(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=240, start_new_session=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "flag True queue written" in result.stdout, result.stderr[-3000:]
