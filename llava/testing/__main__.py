from llava.testing.cli import main

main()
