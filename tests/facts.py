"""Question/answer pairs no base model knows: training on them must change what the model says."""

FACTS = [
    {"question": "What colour is the llm-installer logo?", "answer": "The logo is teal and orange."},
    {"question": "Which port does the demo server use?", "answer": "The demo server listens on port 8000."},
    {"question": "Who is the mascot?", "answer": "The mascot is a small owl named Pip."},
    {"question": "What does circular mode do?", "answer": "It cycles through small data until it knows it."},
    {"question": "Where is the adapter saved?", "answer": "The adapter is saved in the lora folder."},
]
