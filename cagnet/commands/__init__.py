"""One module per `cagnet` subcommand (or group): `add_parser(commands)` adds its parser(s) with
a handler, `run(arguments) -> int` does the work, importing torch and the engine only then so that
`cagnet --help` stays instant."""
