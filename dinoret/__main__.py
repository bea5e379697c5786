from dinoret.cli import main

main()
