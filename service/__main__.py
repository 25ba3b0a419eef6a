import sys

from service.process.server import main

sys.exit(main())
