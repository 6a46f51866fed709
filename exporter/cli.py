"""The ``scaleprobe`` command line.

The parser lives here, in one place, because its flags are a contract (``../shared/DESIGN.md``):
flag names follow Prometheus exporters' conventions (``--config.file``, ``--web.listen-address``).
Each sub-command's work lives in its own module; this file only parses and dispatches.

Exit codes: 0 success, 2 bad usage or bad input (a one-line message naming the problem),
1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from scaleprobe.models.errors import InputError

EXAMPLES = """\
examples:
  scaleprobe run                                   probe this machine's device, serve :9478/metrics
  scaleprobe once                                  one probe cycle, print calibration and accuracy
  scaleprobe once --json > calib.json              save the calibration document
  scaleprobe predict --model bert-base --gpu A100-80GB --batch-sizes 1,64 --seq-lens 128
  scaleprobe predict --model ./my-model/ --calibration calib.json
  scaleprobe gpus                                  the device catalog
  scaleprobe check-config scaleprobe.yml           validate a config file
"""

# sub-command -> "module:function"; each function takes the parsed args and returns an exit code.
HANDLERS = {
    "run": "scaleprobe.exporter.daemon:run_command",
    "once": "scaleprobe.exporter.once:once_command",
    "predict": "scaleprobe.exporter.offline:predict_command",
    "gpus": "scaleprobe.exporter.offline:gpus_command",
    "check-config": "scaleprobe.exporter.config:check_config_command",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaleprobe",
        description=(
            "Probe the accelerator beside an inference server, refit a transformer performance "
            "model of it, and export measured and predicted throughput, framework overhead, "
            "capacity and drift as Prometheus metrics."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="the daemon: probe on a schedule, refit, serve /metrics and the capacity API",
        description=(
            "Run the exporter. Probe cycles run in a separate worker process on their own timer "
            "(never at scrape time); scrapes read the latest snapshot, which is persisted so a "
            "restarted daemon serves its last calibration at once. Stops cleanly on SIGTERM/SIGINT."
        ),
    )
    run.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        help="YAML config (default: built-in defaults for the local device; "
        "see `scaleprobe check-config --help`)",
    )
    run.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=":9478",
        metavar="HOST:PORT",
        help="address to serve HTTP on (default :9478, all interfaces)",
    )
    run.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="TLS and basic-auth settings in the format Prometheus' exporters share "
        "(tls_server_config, basic_auth_users with bcrypt hashes)",
    )
    run.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warn", "error"],
        help="log level (default info)",
    )
    run.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="log line format (default logfmt)",
    )

    run.add_argument(
        "--baseline.reset",
        dest="baseline_reset",
        action="store_true",
        help="pin the next good calibration as the drift baseline (after a deliberate change)",
    )

    once = sub.add_parser(
        "once",
        help="run one probe cycle on the local device and print calibration and accuracy",
        description=(
            "Run one full probe cycle on the local device (cuda:0 if present, else the CPU), "
            "refit the model, and print the calibration and measured-versus-predicted points."
        ),
    )
    once.add_argument("--config.file", dest="config_file", metavar="PATH", help="YAML config")
    once.add_argument(
        "--json",
        action="store_true",
        help="print the calibration document (input of `predict --calibration`) instead of tables",
    )
    once.add_argument(
        "--report", metavar="FILE.html", help="also write the status page as a self-contained file"
    )

    predict = sub.add_parser(
        "predict",
        help="predict latency, throughput and capacity offline, for a catalog GPU or a calibration",
        description=(
            "Predict a model's forward latency and throughput over a grid, from a catalog device's "
            "datasheet (--gpu) or from a calibration measured by `scaleprobe once --json`."
        ),
    )
    predict.add_argument(
        "--model",
        required=True,
        metavar="NAME|CONFIG_DIR",
        help="a preset (distilbert-base, bert-base, bigbird-roberta-base, ...) or a directory "
        "holding a Hugging Face config.json",
    )
    target = predict.add_mutually_exclusive_group(required=True)
    target.add_argument("--gpu", metavar="NAME", help="a catalog device (see `scaleprobe gpus`)")
    target.add_argument(
        "--calibration", metavar="FILE", help="a calibration document from `scaleprobe once --json`"
    )
    predict.add_argument(
        "--batch-sizes", default="1,8,32", metavar="LIST", help="comma-separated (default 1,8,32)"
    )
    predict.add_argument(
        "--seq-lens", default="128,512", metavar="LIST", help="comma-separated (default 128,512)"
    )
    predict.add_argument(
        "--dtype",
        default=None,
        metavar="DTYPE",
        help="float32, float16 or bfloat16 (default: float16 on a GPU, the calibrated dtype else)",
    )
    predict.add_argument(
        "--runtime",
        default="eager",
        choices=["eager", "compiled"],
        help="eager PyTorch (default; pays host dispatch per op) or compiled "
        "(CUDA graphs / TensorRT: no host overhead)",
    )
    predict.add_argument(
        "--memory-bytes",
        type=int,
        default=None,
        metavar="N",
        help="device memory to plan against (default: the device's)",
    )
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")

    gpus = sub.add_parser("gpus", help="list the device catalog (datasheet figures)")
    gpus.add_argument("--json", action="store_true", help="print JSON instead of a table")

    check = sub.add_parser(
        "check-config",
        help="validate a config file and list every problem",
        description="Validate a scaleprobe YAML config file; exit 0 if valid, 2 listing problems.",
    )
    check.add_argument("path", metavar="PATH", help="the YAML config file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(f"scaleprobe {version('scaleprobe')}")
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    module_name, function_name = HANDLERS[args.command].split(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    try:
        return int(handler(args))
    except InputError as error:
        print(f"scaleprobe {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
