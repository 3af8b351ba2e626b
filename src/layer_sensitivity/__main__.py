"""``python -m layer_sensitivity [hydra overrides]`` runs one sensitivity job."""

import sys

from .cli.common import expand_packed_overrides
from .tracking.credentials import scrub_process

HELP = """\
usage: python -m layer_sensitivity [key=value ...]          one sensitivity job = one MLflow run
       python -m layer_sensitivity -m quant_pair=fp8,int8    a sweep: a parent run, a child per job

Per-layer quantization sensitivity of Qwen3-VL's language model (ModelOpt AutoQuantize).
Hydra overrides (defaults in conf/sensitivity.yaml):
  quant_pair=<pair|alias>        fp8, int8, int4, nvfp4, ... (conf/quant_pair/)
  dataset.size=small|medium|large, model=<conf/model preset>, autoquant.method=gradient|kl_div
  autoquant.effective_bits=<bits|[b1,b2,...]>   LM bit target(s); null = the pair's own bits
  tracking.uri=<store>  tracking=none  runner.dry_run=true  hydra.run.dir=<output dir>
Prints the most sensitive groups, the run id and the `mlflow ui` command at the end.
More: --cfg job (the composed config), --hydra-help, README.md."""


def main() -> None:
    sys.argv = expand_packed_overrides(sys.argv)
    if any(a in ("-h", "--help") for a in sys.argv[1:]):  # before Hydra and torch load (fast)
        print(HELP)
        return
    # Passwords leave the command line before Hydra writes it anywhere (.hydra/, job lists).
    sys.argv = scrub_process(sys.argv)
    from .console import quiet_third_party

    quiet_third_party()  # before tqdm is imported: it reads TQDM_DISABLE once
    from .cli.sensitivity import main as sensitivity

    sensitivity()


if __name__ == "__main__":
    main()
