from mlos_repro.cli import main

main()
