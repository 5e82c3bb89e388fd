from llava.testing.build import main

main()
