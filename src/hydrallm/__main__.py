from hydrallm.cli import main

main()
