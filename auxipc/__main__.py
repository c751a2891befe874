from auxipc.cli.main import main

main(prog_name="auxipc")
