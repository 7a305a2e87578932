from hacontrol.cli import main

main()
