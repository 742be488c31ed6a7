# keel_dev_server (a real Temporal dev server for the session), keel_fake_llm (an
# OpenAI-compatible server on loopback) and keel_env (a worker with KeelPlugin on that server).
pytest_plugins = ["keel.testing.pytest_plugin"]
