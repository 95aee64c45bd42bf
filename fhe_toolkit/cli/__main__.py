from fhe_toolkit.cli import main

main()
