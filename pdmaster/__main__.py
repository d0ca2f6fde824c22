from pdmaster.cli import main

main()
