from node_agents.simengine.cli import main

main()
