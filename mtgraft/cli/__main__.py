from mtgraft.cli.app import main

main()
