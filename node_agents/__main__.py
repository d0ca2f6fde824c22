from node_agents.cli import main

main()
