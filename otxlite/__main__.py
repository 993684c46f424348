from otxlite.cli import main

main()
