from hydrallm.cli.main import main

main()
