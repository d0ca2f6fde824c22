from pdcluster.cli import main

main()
