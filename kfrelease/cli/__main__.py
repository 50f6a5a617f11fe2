from kfrelease.cli import main

main()
