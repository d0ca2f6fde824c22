from benchmark_client.cli import main

main()
