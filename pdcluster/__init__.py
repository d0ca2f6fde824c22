"""Plans a whole PD cluster from one file (``pd-cluster plan``): validates the layout and
writes one agent file and start command per host, and Kubernetes manifests. Sits on top:
it builds agent configs with ``node_agents.config`` so the agents accept what it writes."""
