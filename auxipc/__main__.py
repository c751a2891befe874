from auxipc.cli import run

run(prog_name="auxipc")
